"""Synthetic photo sets for the training tests: a strong shared feature (red) with per-photo noise."""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

RED = (220, 20, 20)


def red_photos(folder: Path, n: int = 4, size: int = 64) -> Path:
    """``n`` distinct, mostly red photos (noise keeps them from being duplicates)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        a = np.empty((size, size, 3), np.uint8)
        a[...] = RED
        a = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
        Image.fromarray(a).save(folder / f"photo_{i}.png")
    return folder


def zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for p in sorted(folder.iterdir()):
            zf.write(p, p.name)
    return target


_SERVER_BASE: Path | None = None


def training_server():
    """One live server for the HTTP and page training tests (a start costs seconds of CPU): its own models
    folder (a copy of the task table) and trainings folder, in a temporary directory made once."""
    global _SERVER_BASE
    from tests.http_support import ROOT, shared_server

    if _SERVER_BASE is None:
        _SERVER_BASE = Path(tempfile.mkdtemp(prefix="flux-train-http-"))
        (_SERVER_BASE / "models").mkdir()
        shutil.copy(ROOT / "models" / "tasks.toml", _SERVER_BASE / "models" / "tasks.toml")
    env = {"FLUX_MODELS_DIR": str(_SERVER_BASE / "models"), "FLUX_TRAININGS_DIR": str(_SERVER_BASE / "trainings"),
           "FLUX_TASKS_FILE": str(_SERVER_BASE / "models" / "tasks.toml")}
    return shared_server("trainings", **env), _SERVER_BASE, env
