"""Where a LoRA path points, the same way for the service, the Python API and ``lora inspect``.

Why one function: the three used to disagree. A task's LoRA path is relative to the models folder the user
configured (``FLUX_MODELS_DIR``, default ``models``); a path given to the Python API or the CLI is an
ordinary file path (``models/lora/host_person``). On the demo model, the demo's own LoRA (built beside the
demo weights) may stand in for a path under the models folder *only when the user has no file there*, and
that is a warning carried by every result, never a quiet swap. Results name the file relative to the models
folder (``lora/host_person/pytorch_lora_weights.safetensors``), ``demo:...`` for the demo's own, never an
absolute path.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pipelines.errors import AdapterNotFound

logger = logging.getLogger(__name__)

DEMO_PREFIX = "demo:"
EXTERNAL_PREFIX = "external:"


@dataclass(frozen=True)
class LoraLocation:
    path: Path  # the existing file or folder to read
    note: str | None = None  # set when the demo's own LoRA stands in: the warning every result carries

    @property
    def demo_substitute(self) -> bool:
        return self.note is not None


def _under(path: Path, root: Path) -> Path | None:
    try:
        return Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    except ValueError:
        return None


def task_lora_path(lora: str, models_dir: Path) -> Path:
    """A task table's ``lora`` value -> a path (relative ones are relative to the models folder)."""
    p = Path(lora)
    return p if p.is_absolute() else Path(models_dir) / p


def locate_lora(path: str | Path, *, models_dir: Path, demo_root: Path | None, task: str | None = None) -> LoraLocation:
    """An existing LoRA file/folder for ``path``, or the demo's own LoRA in its place (with a warning note),
    or AdapterNotFound saying where it was looked for. ``demo_root``: the demo model's folder, None on a
    real model (then nothing ever stands in)."""
    p = Path(path)
    if p.exists():
        return LoraLocation(p)
    rel = _under(p, models_dir)
    what = f"task {task!r} LoRA" if task else "LoRA"
    hint = (f"; task LoRA paths are relative to the models folder {models_dir} (FLUX_MODELS_DIR)")
    if demo_root is not None and rel is not None:
        candidate = Path(demo_root) / rel
        if candidate.exists():
            # results travel to clients: the path relative to the models folder, never the server's folders
            # (the log line, for the operator, names them in full)
            shown = p.as_posix() if not p.is_absolute() else f"lora path {rel.as_posix()}"
            note = (f"demo model: {what} {shown} is not in your models folder (FLUX_MODELS_DIR), so the demo's own "
                    f"LoRA {DEMO_PREFIX}{rel.as_posix()} (random weights) is used instead; put your file at "
                    f"{rel.as_posix()} in the models folder to use it")
            logger.warning("demo model: %s %s is not in your models folder %s, so the demo's own LoRA %s%s (random "
                           "weights) is used instead", what, p, models_dir, DEMO_PREFIX, rel.as_posix())
            return LoraLocation(candidate, note)
        raise AdapterNotFound(f"{what} {p} does not exist{hint}; the demo model has no LoRA {rel.as_posix()} "
                              "to stand in for it either", path=str(p))
    raise AdapterNotFound(f"{what} {p} does not exist{hint}", path=str(p))


def display_path(file: Path, *, models_dir: Path, demo_root: Path | None) -> str:
    """How results name a LoRA file: relative to the models folder; ``demo:<path>`` for the demo's own;
    ``external:<folder>/<file>`` for a Python-API file outside both (never an absolute path)."""
    rel = _under(file, models_dir)
    if rel is not None:
        return rel.as_posix()
    if demo_root is not None and (rel := _under(file, demo_root)) is not None:
        return DEMO_PREFIX + rel.as_posix()
    return f"{EXTERNAL_PREFIX}{Path(file).parent.name}/{Path(file).name}"
