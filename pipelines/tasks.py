"""The task table (``models/tasks.toml``): registered LoRAs, and task name -> LoRA(s), strengths, defaults.

Why a file: users used to edit ``model_manager.py`` to change a strength. Now a task is a few lines of
TOML, validated at start-up (unknown keys, out-of-range values and missing LoRA files are errors that name
the file), and a request can still override the strength for itself.

Why a LoRA registry (``[loras.NAME]`` with a ``path``): requests may combine LoRAs (a person + a style) and
set their strengths by *name*; a client never names a file (vLLM's LoRA registry, TGI ``--lora-adapters``).
A task's ``lora = "lora/host_person"`` (a path) is shorthand for registering that path under its folder name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.errors import ConfigError, UnknownTask

MIN_LORA_ALPHA = 0.0
MAX_LORA_ALPHA = 2.0


class _LoraModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: str = Field(min_length=1)
    description: str = ""


class _TaskModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    lora: str = ""
    lora_alpha: float = Field(default=0.7, ge=MIN_LORA_ALPHA, le=MAX_LORA_ALPHA)
    loras: dict[str, float] = Field(default_factory=dict)
    #: a list of words, or the string "from-lora": the words the LoRA files record (kohya ss_* metadata,
    #: an ai-toolkit/Replicate config.yaml beside it), fixed at start-up
    trigger_words: list[str] | Literal["from-lora"] = Field(default_factory=list)
    prompt_template: str = "{prompt}"
    width: int = Field(default=1024, ge=16, multiple_of=16)
    height: int = Field(default=1024, ge=16, multiple_of=16)
    num_inference_steps: int | None = Field(default=None, ge=1)
    guidance_scale: float | None = Field(default=None, ge=0)

    @field_validator("prompt_template")
    @classmethod
    def _has_placeholder(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("must contain {prompt}")
        return value

    @field_validator("loras")
    @classmethod
    def _strengths_in_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, scale in value.items():
            if not MIN_LORA_ALPHA <= scale <= MAX_LORA_ALPHA:
                raise ValueError(f"strength of {name!r} must be between {MIN_LORA_ALPHA} and {MAX_LORA_ALPHA}, "
                                 f"got {scale}")
        return value


@dataclass(frozen=True)
class LoraEntry:
    """A registered LoRA: the name requests and tasks use, and its path relative to the models folder."""

    name: str
    path: str
    description: str = ""
    implicit: bool = False  # registered by a task's ``lora = "<path>"`` shorthand, not a [loras.NAME] table


@dataclass(frozen=True)
class TaskConfig:
    name: str
    description: str
    lora: str | None  # the first LoRA as written in the file (a registered name or a path); None: no LoRA
    lora_alpha: float  # the first LoRA's strength (what a request's ``lora_alpha`` replaces)
    trigger_words: tuple[str, ...]
    prompt_template: str
    width: int
    height: int
    num_inference_steps: int | None
    guidance_scale: float | None
    trigger_words_from_lora: bool = False  # trigger_words = "from-lora" (the engine fills trigger_words)
    #: every LoRA of the task as (registered name, default strength), in the order written
    loras: tuple[tuple[str, float], ...] = ()

    def render_prompt(self, prompt: str) -> str:
        """Trigger words first (as LoRA trainers expect), then the template around the user's prompt."""
        body = self.prompt_template.replace("{prompt}", prompt)
        if self.trigger_words:
            return ", ".join(self.trigger_words) + ", " + body
        return body


@dataclass
class TaskTable:
    source: Path
    tasks: dict[str, TaskConfig] = field(default_factory=dict)
    loras: dict[str, LoraEntry] = field(default_factory=dict)

    def get(self, name: str) -> TaskConfig:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(name, list(self.tasks)) from None

    def names(self) -> list[str]:
        return list(self.tasks)


def _validated(model, body: dict, where: str):
    """One table of the file through its pydantic model; every problem in one ConfigError naming ``where``."""
    try:
        return model(**body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{where}: {problems}") from None


def load_task_table(path: Path) -> TaskTable:
    """Read and validate the task table; every problem is a ``ConfigError`` naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"task table {path} not found; create it (see models/tasks.toml in the repository) "
                          "or set FLUX_TASKS_FILE")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"task table {path} is not valid TOML: {exc}") from exc
    unknown_top = set(raw) - {"tasks", "loras"}
    if unknown_top:
        raise ConfigError(f"task table {path}: unknown top-level keys {sorted(unknown_top)}; expected [tasks.NAME] "
                          "(and [loras.NAME])")
    tasks_raw = raw.get("tasks", {})
    if not tasks_raw:
        raise ConfigError(f"task table {path} defines no tasks; add a [tasks.NAME] table")
    table = TaskTable(source=path)
    for name, body in raw.get("loras", {}).items():
        if not isinstance(body, dict):
            raise ConfigError(f"task table {path}: loras.{name} must be a table with a `path`")
        lm = _validated(_LoraModel, body, f"task table {path}: loras.{name}")
        table.loras[name] = LoraEntry(name=name, path=lm.path.strip(), description=lm.description)
    for name, body in tasks_raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"task table {path}: tasks.{name} must be a table")
        m = _validated(_TaskModel, body, f"task table {path}: tasks.{name}")
        if m.trigger_words == "from-lora" and not (m.lora.strip() or m.loras):
            raise ConfigError(f"task table {path}: tasks.{name}: trigger_words = \"from-lora\" needs a `lora` "
                              "(or `loras`)")
        loras = _task_loras(table, path, name, m)
        table.tasks[name] = TaskConfig(
            name=name,
            description=m.description,
            lora=(m.lora.strip() or loras[0][0]) if loras else None,
            lora_alpha=loras[0][1] if loras else m.lora_alpha,
            trigger_words=() if m.trigger_words == "from-lora" else tuple(m.trigger_words),
            trigger_words_from_lora=m.trigger_words == "from-lora",
            prompt_template=m.prompt_template,
            width=m.width,
            height=m.height,
            num_inference_steps=m.num_inference_steps,
            guidance_scale=m.guidance_scale,
            loras=loras,
        )
    return table


def _task_loras(table: TaskTable, path: Path, task: str, m: _TaskModel) -> tuple[tuple[str, float], ...]:
    """A task's LoRAs as (registered name, strength); a ``lora = "<path>"`` shorthand is registered here."""
    if m.loras:
        if m.lora.strip() or "lora_alpha" in m.model_fields_set:
            raise ConfigError(f"task table {path}: tasks.{task}: use either `lora` + `lora_alpha` (one LoRA) or "
                              "`loras = {{ NAME = strength, ... }}`, not both")
        unknown = [n for n in m.loras if n not in table.loras]
        if unknown:
            raise ConfigError(f"task table {path}: tasks.{task}: loras: {', '.join(map(repr, unknown))} "
                              f"{'is' if len(unknown) == 1 else 'are'} not registered; add a [loras.NAME] table with "
                              f"its `path` (registered: {', '.join(table.loras) or 'none'})")
        return tuple((n, float(s)) for n, s in m.loras.items())
    ref = m.lora.strip()
    if not ref:
        return ()
    if ref in table.loras:
        return ((ref, m.lora_alpha),)
    return ((_register_path(table, ref), m.lora_alpha),)


def _register_path(table: TaskTable, ref: str) -> str:
    """Register a task's LoRA path under its folder (or file) name; the same path gets the same name."""
    for entry in table.loras.values():
        if entry.path == ref:
            return entry.name
    stem = Path(ref).name.removesuffix(".safetensors") or "lora"
    if stem in ("pytorch_lora_weights", "adapter_model"):
        stem = Path(ref).parent.name or stem
    name, n = stem, 2
    while name in table.loras:
        name, n = f"{stem}_{n}", n + 1
    table.loras[name] = LoraEntry(name=name, path=ref, implicit=True)
    return name
