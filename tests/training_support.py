"""Synthetic photo sets for the training tests: a strong shared feature (red) with per-photo noise."""

from __future__ import annotations

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
