"""Saving a training upload into its run folder: every file name checked first, nothing decoded here.

Why names are checked before anything is written (issue 17): a client's file name became a file on the
server, so a NUL in it or 300 characters answered 500, and ``a/x.png`` + ``b/x.png`` both became ``x.png`` and
one photo was silently dropped. Now a name is the part after the last ``/`` or ``\\``, must be a usable file
name (no control character, at most 255 bytes, not ``.``/``..``) and unique; otherwise the upload is refused
(422 naming the files) before one byte is written. Files are copied in chunks (the upload is on disk already,
spooled by the multipart parser), never read whole into memory.
"""

from __future__ import annotations

import shutil
import unicodedata
from pathlib import Path
from typing import BinaryIO, Sequence

from training.errors import DatasetError, DatasetProblem, DatasetTooLarge, TrainingConfigError
from training.sources import DatasetLimits

#: where the photos of an upload of image files go, relative to the run folder (a zip stays beside it)
PHOTOS = "photos"


def upload_name(raw: object) -> str | DatasetProblem:
    """The file name an uploaded file is saved under, or the problem with it."""
    shown = ascii(raw) if isinstance(raw, str) else repr(raw)
    if not isinstance(raw, str) or not raw:
        return DatasetProblem(shown, "bad_name", "a file was sent without a file name")
    name = raw.replace("\\", "/").rsplit("/", 1)[-1]
    if any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in raw):
        return DatasetProblem(shown, "bad_name", "the file name contains a control character (NUL, line break...)")
    if name in ("", ".", ".."):
        return DatasetProblem(shown, "bad_name", "not a file name")
    if len(name.encode("utf-8")) > 255:
        return DatasetProblem(shown[:60] + "...", "bad_name",
                              f"the file name is {len(name.encode('utf-8'))} bytes long; at most 255")
    return name


def save_upload(folder: Path, files: Sequence[tuple[object, bytes | BinaryIO]],
                limits: DatasetLimits) -> tuple[Path, str]:
    """Write the uploaded files under ``folder``; return the dataset source and how messages name it (the
    zip's file name, or ``photos``). Refuses (before writing anything) no files, more than
    ``limits.max_files``, bad or duplicate names, and a zip mixed with other files."""
    if not files:
        raise TrainingConfigError("no photos uploaded (send them as `photos` files, or one .zip)", param="photos")
    if len(files) > limits.max_files:
        raise DatasetTooLarge(f"{len(files)} files were uploaded; at most {limits.max_files} photos and captions "
                              "are accepted (FLUX_TRAINING_MAX_FILES); send fewer, or one .zip")
    names: dict[str, str] = {}
    problems: list[DatasetProblem] = []
    for raw, _ in files:
        name = upload_name(raw)
        if isinstance(name, DatasetProblem):
            problems.append(name)
        elif name in names:
            problems.append(DatasetProblem(ascii(raw), "duplicate_name", f"{names[name]!r} and {raw!r} would both be "
                                           f"saved as {name!r}; rename one (folders are not kept)"))
        else:
            names[name] = str(raw)
    if problems:
        raise DatasetError(f"{len(problems)} uploaded file name(s) cannot be used", problems)
    saved = list(names)
    zips = [n for n in saved if n.lower().endswith(".zip")]
    if zips and len(files) > 1:
        raise TrainingConfigError("send either one .zip or image files, not both", param="photos")
    target = folder if zips else folder / PHOTOS
    target.mkdir(parents=True, exist_ok=True)
    for name, (_, content) in zip(saved, files):
        with open(target / name, "wb") as out:
            if isinstance(content, (bytes, bytearray)):
                out.write(content)
            else:
                content.seek(0)
                shutil.copyfileobj(content, out, 1024 * 1024)
    return (folder / zips[0], zips[0]) if zips else (folder / PHOTOS, PHOTOS)
