"""Reading and checking a folder (or zip) of photos before any compute is spent on it.

Why strict by default: a training run costs 20 minutes of a GPU; a blurry thumbnail, a duplicate (which
silently doubles the weight of one photo) or a caption whose photo was forgotten should be caught in the
first second, each named by its file. ``skip_bad=True`` trains on the usable photos and reports the rest.

Layout (the one kohya, ai-toolkit and Replicate's trainer read): ``photo.jpg`` + optional ``photo.txt``
caption beside it. Hidden files and OS clutter (``.DS_Store``, ``Thumbs.db``, ``__MACOSX/``) are ignored.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from training.errors import DatasetError, DatasetProblem

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CAPTION_SUFFIX = ".txt"
_CLUTTER = {".ds_store", "thumbs.db", "desktop.ini"}
#: a zip bigger than this when unpacked is refused (zip bombs); photos are a few MB each
MAX_UNPACKED_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class Photo:
    name: str  # relative path inside the dataset
    data: bytes  # the file's bytes (decoded later, once, by the trainer)
    width: int
    height: int
    caption: str  # "" when no caption file
    pixel_hash: str


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


def _entries_from_folder(root: Path) -> list[tuple[str, bytes]]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out.append((path.relative_to(root).as_posix(), path.read_bytes()))
    return out


def _entries_from_zip(path: Path) -> list[tuple[str, bytes]]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{path.name} is not a readable zip file ({exc})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        total = sum(i.file_size for i in infos)
        if total > MAX_UNPACKED_BYTES:
            raise DatasetError(f"{path.name} unpacks to {total / 1024**3:.1f} GiB; the limit is "
                               f"{MAX_UNPACKED_BYTES / 1024**3:.0f} GiB")
        out = []
        for info in sorted(infos, key=lambda i: i.filename):
            # names are only used as labels (nothing is extracted to disk), so "../" cannot escape anywhere
            out.append((PurePosixPath(info.filename).as_posix(), zf.read(info)))
        return out


def _ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return any(p.startswith(".") or p == "__MACOSX" for p in parts) or parts[-1].lower() in _CLUTTER


def load_dataset(source: str | Path, *, min_images: int = 4, min_side: int = 256, skip_bad: bool = False) -> Dataset:
    """Read every file, check it, and return the usable photos; raise ``DatasetError`` naming the bad files.

    Checks: unreadable or not-an-image files, images smaller than ``min_side`` on their short side,
    duplicates (same decoded pixels, whatever the file format), caption files without their image, caption
    files that are not UTF-8 text, and fewer than ``min_images`` usable photos (always fatal).
    """
    from PIL import Image, UnidentifiedImageError

    src = Path(source)
    if src.is_dir():
        entries = _entries_from_folder(src)
    elif src.is_file() and src.suffix.lower() == ".zip":
        entries = _entries_from_zip(src)
    elif src.exists():
        raise DatasetError(f"{src} is neither a folder nor a .zip file")
    else:
        raise DatasetError(f"{src} does not exist")

    problems: list[DatasetProblem] = []
    ignored: list[str] = []
    images: dict[str, tuple[bytes, int, int, str]] = {}  # stem -> (data, w, h, pixel hash)
    image_names: dict[str, str] = {}  # stem -> name
    captions: dict[str, tuple[str, str]] = {}  # stem -> (name, text)
    seen_pixels: dict[str, str] = {}
    for name, data in entries:
        if _ignored(name):
            ignored.append(name)
            continue
        suffix = PurePosixPath(name).suffix.lower()
        stem = name[: len(name) - len(suffix)] if suffix else name
        if suffix == CAPTION_SUFFIX:
            try:
                captions[stem] = (name, " ".join(data.decode("utf-8-sig").split()))
            except UnicodeDecodeError:
                problems.append(DatasetProblem(name, "bad_caption", "caption file is not UTF-8 text"))
            continue
        try:
            with Image.open(io.BytesIO(data)) as im:
                im.load()
                rgb = im.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
            if suffix in IMAGE_SUFFIXES:
                problems.append(DatasetProblem(name, "unreadable", f"not a readable image ({exc.__class__.__name__})"))
            else:
                problems.append(DatasetProblem(name, "not_an_image",
                                               f"not an image (expected {', '.join(IMAGE_SUFFIXES)} or .txt captions)"))
            continue
        w, h = rgb.size
        if min(w, h) < min_side:
            problems.append(DatasetProblem(name, "too_small", f"{w}x{h} is smaller than {min_side} px on its short side"))
            continue
        pixel_hash = hashlib.sha256(f"{w}x{h}".encode() + rgb.tobytes()).hexdigest()
        if pixel_hash in seen_pixels:
            problems.append(DatasetProblem(name, "duplicate", f"same picture as {seen_pixels[pixel_hash]}"))
            continue
        if stem in images:
            problems.append(DatasetProblem(name, "duplicate", f"a second image named like {image_names[stem]} "
                                           "(a caption could not tell them apart)"))
            continue
        seen_pixels[pixel_hash] = name
        images[stem] = (data, w, h, pixel_hash)
        image_names[stem] = name
    for stem, (cap_name, _) in sorted(captions.items()):
        if stem not in images and not any(p.file.startswith(stem + ".") for p in problems):
            problems.append(DatasetProblem(cap_name, "caption_without_image", "caption file without an image of the same name"))

    photos = [Photo(name=image_names[stem], data=d, width=w, height=h, caption=captions.get(stem, ("", ""))[1],
                    pixel_hash=ph) for stem, (d, w, h, ph) in sorted(images.items())]
    problems.sort(key=lambda p: p.file)
    if problems and not skip_bad:
        raise DatasetError(f"{len(problems)} file(s) in {src.name} cannot be used (fix or remove them, or pass "
                           "--skip-bad to train on the rest)", problems)
    if len(photos) < min_images:
        raise DatasetError(f"{src.name} has {len(photos)} usable image(s); at least {min_images} are needed "
                           "(10-30 photos is the usual range)", problems)
    for p in problems:
        logger.warning("skipped %s", p)
    return Dataset(source=str(src), photos=photos, problems=problems, ignored=ignored)
