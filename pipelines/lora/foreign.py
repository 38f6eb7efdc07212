"""kohya / LyCORIS / ComfyUI / OneTrainer files -> :class:`LoraWeights`, with one reading of their scale.

Why apart from ``layouts.py``: that module says what each layer of such a file is (a recipe per model
tensor); this one turns the recipes into the contract both adapter strategies load. LoRA layers become
``state_dict`` A/B tensors with their ``alpha / rank`` folded in (as diffusers' kohya converter does, so the
peft strategy gets exactly what bare diffusers gets), bias deltas become ``lora_B.bias``, and every other kind
(LoKr, LoHa, a full ``diff``) stays a recipe in ``LoraWeights.extra``.

One reading of the scale (issue 19, item 5): sd-scripts' ``convert_flux_lora.py`` turns a diffusers file
trained with ``lora_alpha != r`` into kohya layers whose ``.alpha`` is the rank (scale 1) and keeps the
diffusers header, whose ``lora_adapter_metadata`` still records ``lora_alpha`` and ``r``. The header is how
the adapter was trained and what diffusers itself reads, so when the two disagree the header wins, for both
strategies, and every result says so, naming both values.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from pipelines.errors import AdapterMismatch
from pipelines.lora.bfl_names import FluxDims
from pipelines.lora.deltas import Full, LowRank
from pipelines.lora.layouts import ForeignRead, read_foreign
from pipelines.lora.weights import LoraWeights


def _fold(down, up, scale: float):
    """``scale * up @ down`` as two factors with the scale inside, split between them the way diffusers'
    kohya converter splits it (small scales are shared so neither factor shrinks alone)."""
    scale_down, scale_up = scale, 1.0
    while scale_down * 2 < scale_up:
        scale_down, scale_up = scale_down * 2, scale_up / 2
    return down.float() * scale_down, up.float() * scale_up


def _header_config(header: dict) -> dict | None:
    """The transformer's LoraConfig fields from a diffusers ``lora_adapter_metadata`` header, if any."""
    try:
        meta = json.loads(header.get("lora_adapter_metadata") or "{}")
    except json.JSONDecodeError:
        return None
    cfg = {k.removeprefix("transformer."): v for k, v in meta.items() if k.startswith("transformer.")}
    return cfg if "lora_alpha" in cfg and "r" in cfg else None


def _header_scale(cfg: dict, module: str) -> float:
    from peft.utils.other import get_pattern_key

    ranks, alphas = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    r = ranks.get(get_pattern_key(ranks.keys(), module), cfg["r"])
    alpha = alphas.get(get_pattern_key(alphas.keys(), module), cfg["lora_alpha"])
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _scale_text(values) -> str:
    distinct = sorted({round(v, 6) for v in values})
    return f"x{distinct[0]:g}" if len(distinct) == 1 else f"x{distinct[0]:g} to x{distinct[-1]:g}"


def _one_reading(weights: Path, header: dict, read: ForeignRead) -> list[str]:
    """Item 5: LoRA layers whose ``.alpha`` disagrees with the diffusers header take the header's scale."""
    cfg = _header_config(header)
    lora = {t: r for t, r in read.recipes.items() if t[0] == "transformer" and isinstance(r, LowRank)}
    if cfg is None or not lora or not read.alphas:
        return []
    wanted = {t: _header_scale(cfg, t[1]) for t in lora}
    if all(math.isclose(lora[t].scale, s, rel_tol=1e-6) for t, s in wanted.items()):
        return []
    alphas = sorted({round(a, 6) for a in read.alphas.values()})
    from_alpha = _scale_text(r.scale for r in lora.values())
    for target, scale in wanted.items():
        lora[target].scale = scale
    return [f"LoRA {weights.name}: its kohya .alpha tensors (alpha {', '.join(f'{a:g}' for a in alphas)}) give "
            f"scale {from_alpha} but its diffusers header (lora_adapter_metadata) says lora_alpha="
            f"{cfg['lora_alpha']:g}, r={cfg['r']} ({_scale_text(wanted.values())}); both adapter strategies use the "
            "header: it records how the adapter was trained and is what diffusers reads, while sd-scripts' "
            "convert_flux_lora.py writes .alpha = rank whatever the training alpha was"]


def from_foreign(weights: Path, raw: dict, header: dict, dims: FluxDims | None, strict: bool) -> LoraWeights:
    read = read_foreign(raw, header, dims)
    problems = read.refusal()
    if problems and strict:
        raise AdapterMismatch(f"LoRA {weights} ({read.format} layout: {read.tool}): " + "; ".join(problems),
                              path=str(weights))
    warnings = _one_reading(weights, header, read)
    all_lora = all(isinstance(r, LowRank) for (_, _, p), r in read.recipes.items() if p == "weight")
    state_dict, extra, folded = {}, {}, {}
    for (component, module, param), recipe in read.recipes.items():
        prefix = f"{component}.{module}"
        if param == "weight" and isinstance(recipe, LowRank):
            a, b = _fold(recipe.down, recipe.up, recipe.scale)
            state_dict[f"{prefix}.lora_A.weight"], state_dict[f"{prefix}.lora_B.weight"] = a, b
            folded[prefix] = recipe.scale
        elif param == "bias" and all_lora and isinstance(recipe, Full):
            state_dict[f"{prefix}.lora_B.bias"] = recipe.diff.float() * recipe.scale
        else:
            extra[(component, module, param)] = recipe
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(read.kinds.items()))
    alphas = sorted({round(a, 6) for a in read.alphas.values()})
    full_lokr = any(getattr(r, "kind", "") == "LoKr" and r.effective_scale() == 1.0 and getattr(r, "rank", 0) is None
                    for r in read.recipes.values())
    notes = [f"{read.tool}: {kinds or 'no layers'}"
             + (f"; stored alpha {', '.join(f'{a:g}' for a in alphas)} (scale = alpha / rank"
                + ("; LoKr layers with both factors full use scale 1, as LyCORIS trains them" if full_lokr else "")
                + ")" if alphas else "")]
    return LoraWeights(path=weights, format=read.format, state_dict=state_dict, folded_scales=folded, extra=extra,
                       tool=read.tool, kinds=dict(read.kinds), warnings=warnings, unplaced=list(read.unplaced),
                       notes=notes, unloadable=problems, stored_alphas=dict(read.alphas))
