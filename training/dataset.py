"""Reading and checking a folder (or zip) of photos before any compute is spent on it.

Why strict by default: a training run costs 20 minutes of a GPU; a blurry thumbnail, a duplicate (which
silently doubles the weight of one photo) or a caption whose photo was forgotten should be caught in the
first second, each named by its file. ``skip_bad=True`` trains on the usable photos and reports the rest.

Layout (the one kohya, ai-toolkit and Replicate's trainer read): ``photo.jpg`` + optional ``photo.txt``
caption beside it. Hidden files and OS clutter (``.DS_Store``, ``Thumbs.db``, ``__MACOSX/``) are ignored.

Why one photo at a time, header first (issue 17: a 20 KB PNG decoded to 2 GB): each file is read bounded
(``DatasetLimits``, from the ``FLUX_TRAINING_MAX_*`` settings), its pixel count is read from its header and
checked before it is decoded, and a process-wide lock lets one photo be decoded at a time, so concurrent
uploads do not add up: a check holds at most about ``max_file_bytes + 8 x max_image_pixels`` bytes. The
photos' bytes are not kept: ``Photo.data`` reads them again when the trainer encodes them. EXIF orientation
is applied before a photo is sized, so a portrait stored as a rotated landscape is bucketed as a portrait.
"""

from __future__ import annotations

import hashlib
import io
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from training.errors import DatasetError, DatasetProblem
from training.sources import (
    DatasetLimits,
    Entry,
    TooBig,
    Unreadable,
    ZipSource,
    folder_entries,
    read_zip_member,
    too_many_files,
)

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
MAX_CAPTION_BYTES = 64 * 1024  # a caption is a line of words; T5 reads 512 tokens at most
_CLUTTER = {".ds_store", "thumbs.db", "desktop.ini"}
_ORIENTATION = 0x0112  # EXIF tag: how to turn the stored pixels to see the photo upright
_HASH_ROWS = 256  # rows hashed at a time (no second full copy of the pixels)
#: one photo decoded at a time in this process, whatever the number of concurrent uploads
_DECODE_LOCK = threading.Lock()

__all__ = ["Dataset", "DatasetLimits", "Photo", "load_dataset"]


@dataclass(frozen=True)
class Photo:
    name: str  # relative path inside the dataset
    width: int  # as seen (EXIF orientation applied)
    height: int
    caption: str  # "" when no caption file
    pixel_hash: str
    read: Callable[[], bytes] = field(repr=False, compare=False)

    @property
    def data(self) -> bytes:
        """The file's bytes, read again from the folder or zip (decoded by the trainer, once)."""
        return self.read()


@dataclass
class Dataset:
    source: str
    photos: list[Photo]
    problems: list[DatasetProblem] = field(default_factory=list)  # skipped files (skip_bad=True)
    ignored: list[str] = field(default_factory=list)  # OS clutter, hidden files

    @property
    def hash(self) -> str:
        """Same photos (pixels) with the same captions and names -> same hash, whatever the container."""
        h = hashlib.sha256()
        for p in sorted(self.photos, key=lambda p: p.name):
            h.update(f"{p.name}\0{p.pixel_hash}\0{p.caption}\n".encode())
        return h.hexdigest()

    @property
    def captioned(self) -> int:
        return sum(1 for p in self.photos if p.caption)

    def summary(self) -> dict:
        return {"source": self.source, "images": len(self.photos), "captioned": self.captioned,
                "hash": self.hash, "files": [p.name for p in self.photos],
                "skipped": [p.to_dict() for p in self.problems], "ignored": self.ignored}


def _ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in _CLUTTER


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB" if n >= 1024**2 else f"{n} bytes"


def _check_image(name: str, data: bytes, limits: DatasetLimits) -> tuple[int, int, str] | DatasetProblem:
    """(width, height, pixel hash) as seen upright, or the problem; the size is checked from the header."""
    from PIL import Image, ImageOps

    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limits.max_image_pixels:
                return DatasetProblem(name, "too_large", f"{w}x{h} is {w * h / 1e6:.0f} megapixels; the limit is "
                                      f"{limits.max_image_pixels / 1e6:g} (FLUX_TRAINING_MAX_IMAGE_PIXELS)")
            im.load()
            seen = ImageOps.exif_transpose(im) if im.getexif().get(_ORIENTATION, 1) in range(2, 9) else im
            rgb = seen if seen.mode == "RGB" else seen.convert("RGB")
    except Image.DecompressionBombError as exc:
        return DatasetProblem(name, "too_large", f"too many pixels to decode ({exc})")
    except Exception as exc:  # noqa: BLE001 - any failure to decode an uploaded file means "unreadable"
        return DatasetProblem(name, "unreadable", f"not a readable image ({exc.__class__.__name__})")
    w, h = rgb.size
    digest = hashlib.sha256(f"{w}x{h}".encode())
    for top in range(0, h, _HASH_ROWS):  # the same digest as one update with rgb.tobytes()
        digest.update(rgb.crop((0, top, w, min(h, top + _HASH_ROWS))).tobytes())
    return w, h, digest.hexdigest()


def load_dataset(source: str | Path, *, min_images: int = 4, min_side: int = 256, skip_bad: bool = False,
                 limits: DatasetLimits | None = None, label: str | None = None) -> Dataset:
    """Read every file, check it, and return the usable photos; raise ``DatasetError`` naming the bad files.

    Checks: unreadable or not-an-image files, images smaller than ``min_side`` on their short side or larger
    than the limits (bytes, pixels), duplicates (same decoded pixels, whatever the file format), caption files
    without their image, caption files that are not UTF-8 text, and fewer than ``min_images`` usable photos
    (always fatal). ``DatasetTooLarge`` (413) for more files or unpacked bytes than the limits. ``label``: how
    messages name the source (the HTTP service passes the client's file name, never a server path).
    """
    limits = limits or DatasetLimits()
    src = Path(source)
    label = label if label is not None else str(src)
    if src.is_dir():
        entries = folder_entries(src)
        files = sum(1 for e in entries if not _ignored(e.name))
        if files > limits.max_files:
            raise too_many_files(label, files, limits)
        return _check(entries, src, label, min_images, min_side, skip_bad, limits,
                      lambda e: (lambda p=src / e.name: p.read_bytes()))
    if src.is_file() and src.suffix.lower() == ".zip":
        with ZipSource(src, label, limits) as zs:
            entries = zs.entries(lambda name: not _ignored(name))
            return _check(entries, src, label, min_images, min_side, skip_bad, limits,
                          lambda e: (lambda n=e.name: read_zip_member(src, n, limits.max_file_bytes)))
    if src.exists():
        raise DatasetError(f"{label} is neither a folder nor a .zip file")
    raise DatasetError(f"{label} does not exist")


def _check(entries: list[Entry], src: Path, label: str, min_images: int, min_side: int, skip_bad: bool,
           limits: DatasetLimits, reader: Callable[[Entry], Callable[[], bytes]]) -> Dataset:
    problems: list[DatasetProblem] = []
    ignored: list[str] = []
    images: dict[str, tuple[Entry, int, int, str]] = {}  # stem -> (entry, w, h, pixel hash)
    captions: dict[str, tuple[str, str]] = {}  # stem -> (name, text)
    seen_pixels: dict[str, str] = {}
    for entry in entries:
        name = entry.name
        if _ignored(name):
            ignored.append(name)
            continue
        suffix = PurePosixPath(name).suffix.lower()
        stem = name[: len(name) - len(suffix)] if suffix else name
        if suffix not in IMAGE_SUFFIXES + (CAPTION_SUFFIX,):
            problems.append(DatasetProblem(name, "not_an_image",
                                           f"not an image (expected {', '.join(IMAGE_SUFFIXES)} or .txt captions)"))
            continue
        limit = MAX_CAPTION_BYTES if suffix == CAPTION_SUFFIX else limits.max_file_bytes
        with _DECODE_LOCK:
            try:
                data = entry.read(limit)
            except TooBig:
                what = "caption files are a line of words" if suffix == CAPTION_SUFFIX else \
                    "the limit is FLUX_TRAINING_MAX_FILE_BYTES"
                problems.append(DatasetProblem(name, "too_large", f"larger than {_mib(limit)} ({what})"))
                continue
            except Unreadable as exc:
                problems.append(DatasetProblem(name, "unreadable", f"cannot be read from the zip ({exc})"))
                continue
            if suffix == CAPTION_SUFFIX:
                try:
                    captions[stem] = (name, " ".join(data.decode("utf-8-sig").split()))
                except UnicodeDecodeError:
                    problems.append(DatasetProblem(name, "bad_caption", "caption file is not UTF-8 text"))
                continue
            checked = _check_image(name, data, limits)
            del data
        if isinstance(checked, DatasetProblem):
            problems.append(checked)
            continue
        w, h, pixel_hash = checked
        if min(w, h) < min_side:
            problems.append(DatasetProblem(name, "too_small", f"{w}x{h} is smaller than {min_side} px on its short side"))
            continue
        if pixel_hash in seen_pixels:
            problems.append(DatasetProblem(name, "duplicate", f"same picture as {seen_pixels[pixel_hash]}"))
            continue
        if stem in images:
            problems.append(DatasetProblem(name, "duplicate", f"a second image named like {images[stem][0].name} "
                                           "(a caption could not tell them apart)"))
            continue
        seen_pixels[pixel_hash] = name
        images[stem] = (entry, w, h, pixel_hash)
    for stem, (cap_name, _) in sorted(captions.items()):
        if stem not in images and not any(p.file.startswith(stem + ".") for p in problems):
            problems.append(DatasetProblem(cap_name, "caption_without_image", "caption file without an image of the same name"))

    photos = [Photo(name=e.name, width=w, height=h, caption=captions.get(stem, ("", ""))[1], pixel_hash=ph,
                    read=reader(e)) for stem, (e, w, h, ph) in sorted(images.items())]
    problems.sort(key=lambda p: p.file)
    if problems and not skip_bad:
        raise DatasetError(f"{len(problems)} file(s) in {Path(label).name or label} cannot be used (fix or remove "
                           "them, or skip them to train on the rest: `--skip-bad`, over HTTP `skip_bad=true`)",
                           problems)
    if len(photos) < min_images:
        raise DatasetError(f"{Path(label).name or label} has {len(photos)} usable image(s); at least {min_images} "
                           "are needed (10-30 photos is the usual range)", problems)
    for p in problems:
        logger.warning("skipped %s", p)
    return Dataset(source=label, photos=photos, problems=problems, ignored=ignored)
