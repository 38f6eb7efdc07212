"""Several LoRAs per request: which registered LoRAs a generation uses, at which strengths.

The rules (one place, used by every front end through ``engine.plan``):

- a task brings its LoRAs at their default strengths (``[tasks.X] loras = { host_person = 0.7, ... }`` or the
  one-LoRA shorthand ``lora`` + ``lora_alpha``);
- ``lora_alpha`` keeps its old meaning: the strength of the task's LoRA. A task with several LoRAs has no one
  "task's LoRA", so there ``lora_alpha`` is refused with a pointer to ``loras``;
- a request's ``loras`` [(name, scale), ...] sets the strength of registered LoRAs by name: a LoRA of the task
  gets the new strength, any other registered LoRA is added. Names only: a path is refused, never opened;
- strength 0 keeps a LoRA listed (the result says it was off) but it is not applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipelines.errors import InvalidRequest
from pipelines.tasks import MAX_LORA_ALPHA, MIN_LORA_ALPHA

#: more would not be a style + a person but a mistake, and each costs a switch
MAX_LORAS_PER_REQUEST = 8


@dataclass(frozen=True)
class ActiveLora:
    name: str  # the registered name the request or task used
    adapter: object  # ResidentAdapter
    scale: float

    def to_dict(self) -> dict:
        return {"name": self.name, "adapter": self.adapter.name, "file": self.adapter.file.name,
                "adapter_file": self.adapter.label, "sha256": self.adapter.sha256, "scale": self.scale}


def target_patterns(modules) -> list[str]:
    """``transformer_blocks.3.attn.to_q`` -> ``transformer_blocks.*.attn.to_q``: what a LoRA adapts, briefly."""
    return sorted({re.sub(r"\.\d+\.", ".*.", m) for m in modules})


def normalise_request_loras(raw) -> tuple[tuple[str, float], ...] | None:
    """Python API convenience: a dict {name: scale}, [(name, scale)], or [{"name", "scale"}] -> pairs."""
    if raw is None:
        return None
    items = raw.items() if isinstance(raw, dict) else raw
    out = []
    for item in items:
        if isinstance(item, dict):
            if set(item) - {"name", "scale"} or "name" not in item:
                raise InvalidRequest(f"`loras` entries are {{\"name\": ..., \"scale\": ...}}, got {item!r}",
                                     param="loras")
            out.append((item["name"], item.get("scale", 1.0)))
        else:
            try:
                name, scale = item
            except (TypeError, ValueError):
                raise InvalidRequest(f"`loras` entries are (name, scale) pairs, got {item!r}", param="loras") from None
            out.append((name, scale))
    return tuple(out)


def plan_loras(*, registry: dict, base: list[tuple[str, object, float]], task_name: str | None,
               lora_alpha: float | None, requested) -> tuple[ActiveLora, ...]:
    """Merge the task's LoRAs (``base``: [(name, adapter, default)]), ``lora_alpha`` and the request's
    ``loras`` into the ordered set to activate. Raises InvalidRequest naming the field."""
    chosen: dict[str, tuple[object, float]] = {n: (a, s) for n, a, s in base}
    if lora_alpha is not None:
        if len(chosen) > 1:
            raise InvalidRequest(f"`lora_alpha` is the strength of the task's LoRA, but task {task_name!r} uses "
                                 f"several ({', '.join(chosen)}); set each with `loras`, e.g. "
                                 f"[{{\"name\": \"{next(iter(chosen))}\", \"scale\": 0.8}}]", param="lora_alpha")
        for n, (a, _) in chosen.items():
            chosen[n] = (a, float(lora_alpha))
    seen: set[str] = set()
    for entry in normalise_request_loras(requested) or ():
        name, scale = entry
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"`loras`: each entry needs a `name` (a registered LoRA), got {name!r}",
                                 param="loras")
        if "/" in name or "\\" in name or name.endswith(".safetensors"):
            raise InvalidRequest(f"`loras`: {name!r} looks like a path; requests name registered LoRAs only "
                                 f"(registered: {', '.join(registry) or 'none'}; see GET /api/loras)", param="loras")
        if name not in registry:
            raise InvalidRequest(f"`loras`: {name!r} is not a registered LoRA; registered: "
                                 f"{', '.join(registry) or 'none'} (GET /api/loras)", param="loras")
        if name in seen:
            raise InvalidRequest(f"`loras`: {name!r} is listed twice", param="loras")
        seen.add(name)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise InvalidRequest(f"`loras`: the scale of {name!r} must be a number, got {scale!r}", param="loras")
        if not MIN_LORA_ALPHA <= scale <= MAX_LORA_ALPHA:
            raise InvalidRequest(f"`loras`: the scale of {name!r} must be between {MIN_LORA_ALPHA} and "
                                 f"{MAX_LORA_ALPHA}, got {scale}", param="loras")
        if lora_alpha is not None and name in chosen:
            raise InvalidRequest(f"{name!r} got a strength from both `lora_alpha` and `loras`; give it once",
                                 param="loras")
        chosen[name] = (registry[name], float(scale))
    by_adapter: dict[int, str] = {}
    for n, (a, _) in chosen.items():
        if id(a) in by_adapter:
            raise InvalidRequest(f"`loras`: {by_adapter[id(a)]!r} and {n!r} are the same LoRA file; use one name",
                                 param="loras")
        by_adapter[id(a)] = n
    if len(chosen) > MAX_LORAS_PER_REQUEST:
        raise InvalidRequest(f"`loras`: at most {MAX_LORAS_PER_REQUEST} LoRAs per request, got {len(chosen)}",
                             param="loras")
    return tuple(ActiveLora(name=n, adapter=a, scale=s) for n, (a, s) in chosen.items())


def describe_loras(named: dict, table) -> list[dict]:
    """Registered name -> resident adapter, as clients see it: name, relative path, hash, rank, targets, tasks."""
    used: dict[str, list[str]] = {}
    for t in table.tasks.values():
        for n, _ in t.loras:
            used.setdefault(n, []).append(t.name)
    out = []
    for name, adapter in named.items():
        entry = table.loras.get(name)
        out.append({
            "name": name, "description": entry.description if entry else "",
            "path": entry.path if entry else adapter.file.name, "file": adapter.file.name,
            "adapter_file": adapter.label,  # what results name it (``demo:...`` when the demo's stands in)
            "format": adapter.format, "sha256": adapter.sha256, "rank": adapter.rank, "alpha": adapter.alpha,
            "layers": len(adapter.modules), "targets": target_patterns(adapter.modules),
            "tasks": used.get(name, []),
        })
    return out
