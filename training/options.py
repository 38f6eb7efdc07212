"""What a training may be asked, parsed and checked in one place for ``flux-service train`` and
``POST /api/trainings``.

Why one function for both (issue 17): the HTTP route used to queue a run (202) with values only the trainer
subprocess checked, so ``trigger`` with a NUL blocked the queue forever, ``task=a/b`` failed after a whole
training, ``strength=nan`` was queued and ``--resume`` as a trigger word was read by the trainer as an
option. Values arrive as text (form fields, command-line words) or already typed (Python); every one is
parsed and checked here, and every refusal is a ``TrainingConfigError`` naming the field as the HTTP API
spells it. The option ranges (steps, rank, lr...) stay in ``TrainConfig.validate``, which this calls.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Mapping

from pipelines.tasks import MAX_LORA_ALPHA, MIN_LORA_ALPHA
from training.config import TrainConfig, check_name, check_trigger, preset
from training.errors import TrainingConfigError

#: every field, as the HTTP form names it (the command line spells them --caption-dropout ...)
FIELDS = ("name", "trigger", "task", "strength", "steps", "rank", "alpha", "lr", "resolution", "seed",
          "caption_dropout", "checkpoint_every", "overwrite", "overwrite_task", "skip_bad")
_INT = re.compile(r"[+-]?\d{1,19}")
_TRUE, _FALSE = ("true", "1", "on", "yes"), ("false", "0", "off", "no")


@dataclass(frozen=True)
class TrainOptions:
    name: str
    trigger: str
    task: str | None = None
    strength: float = 1.0
    steps: int | None = None
    rank: int | None = None
    alpha: float | None = None
    lr: float | None = None
    resolutions: tuple[int, ...] | None = None
    seed: int | None = None
    caption_dropout: float | None = None
    checkpoint_every: int | None = None
    overwrite: bool = False
    overwrite_task: bool = False
    skip_bad: bool = False

    def config(self, *, demo: bool) -> TrainConfig:
        """The preset for this model with these options (alpha defaults to rank); validated."""
        alpha = self.alpha if self.alpha is not None else (float(self.rank) if self.rank is not None else None)
        return preset(self.name, self.trigger, demo=demo, steps=self.steps, rank=self.rank, alpha=alpha, lr=self.lr,
                      resolutions=self.resolutions, seed=self.seed, caption_dropout=self.caption_dropout,
                      checkpoint_every=self.checkpoint_every)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolutions"] = list(self.resolutions) if self.resolutions else None
        return d

    def values(self) -> dict:
        """The fields as ``parse_options`` takes them (``resolution``, not ``resolutions``)."""
        d = asdict(self)
        d["resolution"] = d.pop("resolutions")
        return d

    def cli_args(self) -> list[str]:
        """The ``flux-service train`` options giving these values, each as ``--option=value`` so that no value
        (a trigger word ``--resume``) can be read as an option; the photos go after ``--``."""
        args = [f"--name={self.name}", f"--trigger={self.trigger}"]
        if self.task:
            args += [f"--task={self.task}", f"--strength={self.strength!r}"]
        for key, value in (("steps", self.steps), ("rank", self.rank), ("alpha", self.alpha), ("lr", self.lr),
                           ("seed", self.seed), ("caption-dropout", self.caption_dropout),
                           ("checkpoint-every", self.checkpoint_every)):
            if value is not None:
                args.append(f"--{key}={value!r}")
        if self.resolutions:
            args.append("--resolution=" + ",".join(map(str, self.resolutions)))
        args += [f"--{flag}" for flag, on in (("overwrite", self.overwrite), ("overwrite-task", self.overwrite_task),
                                              ("skip-bad", self.skip_bad)) if on]
        return args


def parse_options(values: Mapping[str, object]) -> TrainOptions:
    """``values``: field -> text or typed value; None or "" means "not given" (an empty form field).
    Refuses unknown fields, missing ``name``/``trigger`` and every bad value, naming the field."""
    unknown = [k for k in values if k not in FIELDS]
    if unknown:
        raise TrainingConfigError(f"unknown field `{unknown[0]}`; the fields are {', '.join(FIELDS)}",
                                  param=unknown[0])
    given = {k: v for k, v in values.items() if v is not None and v != ""}
    for required in ("name", "trigger"):
        if required not in given:
            raise TrainingConfigError(f"`{required}` is required", param=required)
    options = TrainOptions(
        name=check_name("name", _text("name", given["name"])),
        trigger=check_trigger(_text("trigger", given["trigger"])),
        task=check_name("task", _text("task", given["task"])) if "task" in given else None,
        strength=_strength(given.get("strength", 1.0)),
        steps=_int("steps", given.get("steps")),
        rank=_int("rank", given.get("rank")),
        alpha=_float("alpha", given.get("alpha")),
        lr=_float("lr", given.get("lr")),
        resolutions=_resolutions(given.get("resolution")),
        seed=_int("seed", given.get("seed")),
        caption_dropout=_float("caption_dropout", given.get("caption_dropout")),
        checkpoint_every=_int("checkpoint_every", given.get("checkpoint_every")),
        overwrite=_bool("overwrite", given.get("overwrite", False)),
        overwrite_task=_bool("overwrite_task", given.get("overwrite_task", False)),
        skip_bad=_bool("skip_bad", given.get("skip_bad", False)),
    )
    options.config(demo=False)  # the ranges (steps, rank, lr, resolution...): the same for both presets
    return options


def _bad(param: str, message: str) -> TrainingConfigError:
    return TrainingConfigError(message, param=param)


def _text(param: str, value: object) -> str:
    if not isinstance(value, str):
        raise _bad(param, f"`{param}` must be text, got {type(value).__name__}")
    return value


def _int(param: str, value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)) or \
            (isinstance(value, str) and not _INT.fullmatch(value.strip())):
        raise _bad(param, f"`{param}` must be an integer, got {value!r}")
    return int(value)


def _float(param: str, value: object) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _bad(param, f"`{param}` must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise _bad(param, f"`{param}` must be a finite number, got {value!r}")
    return number


def _strength(value: object) -> float:
    number = _float("strength", value)
    if not MIN_LORA_ALPHA <= number <= MAX_LORA_ALPHA:  # type: ignore[operator]
        raise _bad("strength", f"`strength` (the task's default lora_alpha) must be between {MIN_LORA_ALPHA:g} and "
                               f"{MAX_LORA_ALPHA:g}, got {value!r}")
    return float(number)  # type: ignore[arg-type]


def _resolutions(value: object) -> tuple[int, ...] | None:
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)  # type: ignore[call-overload]
    try:
        numbers = tuple(_int("resolution", p.strip() if isinstance(p, str) else p) for p in parts)
    except TrainingConfigError:
        numbers = ()
    if not numbers or any(n is None for n in numbers):
        raise _bad("resolution", f"`resolution` must be integers separated by commas, e.g. 512,768,1024; got {value!r}")
    return numbers  # type: ignore[return-value]


def _bool(param: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(param, f"`{param}` must be true or false, got {value!r}")
