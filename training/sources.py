"""Where a dataset's files come from (a folder or a zip), read without trusting them.

Why its own module: a 0.5 MB zip with one 400 MB member, or with millions of empty members, costs memory
before a single photo is checked (issue 17). So nothing is unpacked up front: the zip's entry count is read
from its end record before ``zipfile`` parses the directory, every member is read on demand as a bounded
stream (a member over ``max_file_bytes`` is refused, by its declared size or by what it really yields), and
the bytes read add up against ``max_unpacked_bytes``. Names are labels only: nothing is extracted to disk, so
``../`` in a member name cannot point anywhere.
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from training.errors import DatasetError, DatasetTooLarge

_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class DatasetLimits:
    """What one dataset may hold (``FLUX_TRAINING_MAX_*``); the defaults are the settings' defaults."""

    max_files: int = 1000
    max_file_bytes: int = 100 * 1024**2
    max_image_pixels: int = 50_000_000
    max_unpacked_bytes: int = 2 * 1024**3

    @classmethod
    def from_settings(cls, settings) -> "DatasetLimits":
        return cls(max_files=settings.training_max_files, max_file_bytes=settings.training_max_file_bytes,
                   max_image_pixels=settings.training_max_image_pixels,
                   max_unpacked_bytes=settings.training_max_unpacked_bytes)


class TooBig(Exception):
    """A file yielded more bytes than the caller allowed (it was not read further)."""


class Unreadable(Exception):
    """A member could not be read out of its archive (encrypted, corrupt, unsupported compression)."""


@dataclass
class Entry:
    name: str  # relative path inside the folder or zip, "/"-separated
    size: int  # as declared (a zip's header may lie; ``read`` counts what really comes)
    read: Callable[[int], bytes] = field(repr=False)  # read(limit) -> bytes; TooBig past limit, Unreadable


def folder_entries(root: Path) -> list[Entry]:
    out = []
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out.append(Entry(path.relative_to(root).as_posix(), path.stat().st_size,
                             lambda limit, p=path: _read_file(p, limit)))
    return out


def _read_file(path: Path, limit: int) -> bytes:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooBig
    return data


class ZipSource:
    """The members of a zip, read one at a time against the limits (used as a context manager)."""

    def __init__(self, path: Path, label: str, limits: DatasetLimits) -> None:
        self.path, self.label, self.limits = path, label, limits
        self.unpacked = 0  # bytes read out of the zip so far, across members
        count = zip_entry_count(path)
        if count is not None and count > 2 * limits.max_files:  # before zipfile builds an object per entry
            raise too_many_files(label, count, limits)
        try:
            self.zf = zipfile.ZipFile(path)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise DatasetError(f"{label} is not a readable zip file ({type(exc).__name__})") from None

    def __enter__(self) -> "ZipSource":
        return self

    def __exit__(self, *exc) -> None:
        self.zf.close()

    def entries(self, counted: Callable[[str], bool]) -> list[Entry]:
        """Every file member (``counted(name)``: whether it counts against ``max_files``; OS clutter does
        not). Refuses at once a zip declaring more files or unpacked bytes than the limits."""
        infos = sorted((i for i in self.zf.infolist() if not i.is_dir()), key=lambda i: i.filename)
        files = sum(1 for i in infos if counted(i.filename))
        if files > self.limits.max_files:
            raise too_many_files(self.label, files, self.limits)
        declared = sum(i.file_size for i in infos)
        if declared > self.limits.max_unpacked_bytes:
            raise too_unpacked(self.label, declared, self.limits)
        return [Entry(PurePosixPath(i.filename).as_posix(), i.file_size,
                      lambda limit, info=i: self._read(info, limit)) for i in infos]

    def _read(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        if info.file_size > limit:
            raise TooBig
        chunks, size = [], 0
        try:
            with self.zf.open(info) as f:
                while chunk := f.read(min(_CHUNK, limit + 1 - size)):
                    size += len(chunk)
                    self.unpacked += len(chunk)
                    if self.unpacked > self.limits.max_unpacked_bytes:
                        raise too_unpacked(self.label, self.unpacked, self.limits)
                    if size > limit:
                        raise TooBig
                    chunks.append(chunk)
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, OSError, EOFError) as exc:
            raise Unreadable(type(exc).__name__) from None
        return b"".join(chunks)


def read_zip_member(path: Path, name: str, limit: int) -> bytes:
    """One member again, later (the trainer reads each photo when it encodes it)."""
    with zipfile.ZipFile(path) as zf, zf.open(name) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise TooBig
    return data


def zip_entry_count(path: Path) -> int | None:
    """The number of entries a zip's end-of-central-directory record declares (zip64 included), or None
    when there is none (then ``zipfile`` says it is not a zip). Read from the last 64 KiB, so a directory of
    millions of entries is refused before ``zipfile`` turns each one into an object."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 65557))
            tail = f.read()
    except OSError:
        return None
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    count = struct.unpack_from("<H", tail, at + 10)[0]
    if count == 0xFFFF and at >= 20 and tail[at - 20:at - 16] == b"PK\x06\x07":  # zip64 locator -> record
        offset = struct.unpack_from("<Q", tail, at - 20 + 8)[0]
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                record = f.read(56)
        except (OSError, ValueError):
            return None
        if len(record) == 56 and record[:4] == b"PK\x06\x06":
            count = struct.unpack_from("<Q", record, 32)[0]
    return count


def too_many_files(label: str, count: int, limits: DatasetLimits) -> DatasetTooLarge:
    return DatasetTooLarge(f"{label} holds {count} files; at most {limits.max_files} photos and captions are "
                           "accepted (FLUX_TRAINING_MAX_FILES)")


def too_unpacked(label: str, size: int, limits: DatasetLimits) -> DatasetTooLarge:
    return DatasetTooLarge(f"{label} unpacks to at least {size / 1024**2:.0f} MiB; the limit is "
                           f"{limits.max_unpacked_bytes / 1024**2:.0f} MiB (FLUX_TRAINING_MAX_UNPACKED_BYTES)")
