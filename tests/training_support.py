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


def png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of ``width`` x ``height`` black pixels, a few KB on disk (decompression bomb):
    written by hand (IHDR + one zlib IDAT of zero rows) so no test ever holds the decoded picture."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def rotated_jpeg(path: Path, width: int = 96, height: int = 64) -> Path:
    """A landscape JPEG as a camera stores a portrait shot: stored ``width`` x ``height`` with the EXIF
    orientation 6 ("rotate 90° clockwise to view"), so it is seen as ``height`` x ``width``. The stored left
    half is red and the right half blue: seen upright, red is on top."""
    a = np.zeros((height, width, 3), np.uint8)
    a[:, : width // 2] = RED
    a[:, width // 2:] = (20, 20, 220)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(path, "JPEG", quality=95, exif=exif.tobytes())
    return path


def runs_for(base: Path, **overrides):
    """A ``TrainingRuns`` (the HTTP trainings' supervisor) on its own models and trainings folders, with a
    copy of the repository's task table; not started, so nothing trains unless a test starts it."""
    from tests.conftest import make_settings
    from tests.http_support import ROOT
    from training.runs import TrainingRuns

    (base / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "models" / "tasks.toml", base / "models" / "tasks.toml")
    settings = make_settings(models_dir=base / "models", trainings_dir=base / "trainings",
                             tasks_file=base / "models" / "tasks.toml", **overrides)
    return TrainingRuns(settings, demo=True, device="cpu")
