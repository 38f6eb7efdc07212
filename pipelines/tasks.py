"""The task table (``models/tasks.toml``): task name -> LoRA, default strength, prompt template, defaults.

Why a file: users used to edit ``model_manager.py`` to change a strength. Now a task is a few lines of
TOML, validated at start-up (unknown keys, out-of-range values and missing LoRA files are errors that name
the file), and a request can still override the strength for itself.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ConfigError, UnknownTask

MIN_LORA_ALPHA = 0.0
MAX_LORA_ALPHA = 2.0


class _TaskModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    lora: str = ""
    lora_alpha: float = Field(default=0.7, ge=MIN_LORA_ALPHA, le=MAX_LORA_ALPHA)
    #: a list of words, or the string "from-lora": the words the LoRA file records (kohya ss_* metadata,
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


@dataclass(frozen=True)
class TaskConfig:
    name: str
    description: str
    lora: str | None  # as written in the file, relative to the models folder; None: no LoRA
    lora_alpha: float
    trigger_words: tuple[str, ...]
    prompt_template: str
    width: int
    height: int
    num_inference_steps: int | None
    guidance_scale: float | None
    trigger_words_from_lora: bool = False  # trigger_words = "from-lora" (the engine fills trigger_words)

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

    def get(self, name: str) -> TaskConfig:
        try:
            return self.tasks[name]
        except KeyError:
            raise UnknownTask(name, list(self.tasks)) from None

    def names(self) -> list[str]:
        return list(self.tasks)


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
    unknown_top = set(raw) - {"tasks"}
    if unknown_top:
        raise ConfigError(f"task table {path}: unknown top-level keys {sorted(unknown_top)}; expected [tasks.NAME]")
    tasks_raw = raw.get("tasks", {})
    if not tasks_raw:
        raise ConfigError(f"task table {path} defines no tasks; add a [tasks.NAME] table")
    table = TaskTable(source=path)
    for name, body in tasks_raw.items():
        if not isinstance(body, dict):
            raise ConfigError(f"task table {path}: tasks.{name} must be a table")
        try:
            m = _TaskModel(**body)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"task table {path}: tasks.{name}: {problems}") from None
        if m.trigger_words == "from-lora" and not m.lora.strip():
            raise ConfigError(f"task table {path}: tasks.{name}: trigger_words = \"from-lora\" needs a `lora`")
        table.tasks[name] = TaskConfig(
            name=name,
            description=m.description,
            lora=m.lora.strip() or None,
            lora_alpha=m.lora_alpha,
            trigger_words=() if m.trigger_words == "from-lora" else tuple(m.trigger_words),
            trigger_words_from_lora=m.trigger_words == "from-lora",
            prompt_template=m.prompt_template,
            width=m.width,
            height=m.height,
            num_inference_steps=m.num_inference_steps,
            guidance_scale=m.guidance_scale,
        )
    return table
