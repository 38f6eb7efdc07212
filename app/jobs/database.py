"""The job database file (``FLUX_DATA_DIR/jobs.sqlite3``): open it, tell a passing fault from a damaged file, and
put a new file in place of one that was damaged or deleted.

Why a module of its own: the job store (``store.py``) decides what to keep in memory and when to retry; this
module alone knows SQLite's files (the database, its ``-wal`` and ``-shm`` companions) and error codes.

What an error means (``classify``):

- ``locked``: another process holds the write lock past the busy timeout (SQLITE_BUSY/LOCKED): wait and retry.
- ``full``: the disk is full (SQLITE_FULL): retry once space returns.
- ``damaged``: the file is not a database, is malformed, or lost its table (overwritten, truncated). Confirmed on
  a fresh connection (``confirm_damaged``), then the files are moved aside, named in the log, and a new database
  takes their place (``replace``): what was only in that file is lost, the service keeps working.
- ``io``: anything else (an I/O error, a read-only file): retry.

A database file that vanished (deleted, or replaced by another file, while the service runs) keeps working
for the connection that has it open, and every write after that would be lost at the next start. So the
store checks the file's identity (device and inode) before it writes (``vanished``), and ``replace`` copies
what the open connection still sees into a new file at the same path (SQLite's backup API): nothing is lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

NAME = "jobs.sqlite3"
COMPANIONS = ("-wal", "-shm")
#: how long one statement waits for another process's write lock before it counts as a fault
BUSY_TIMEOUT_S = 2.0

SCHEMA_VERSION = 2  # 2: image_sha256
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq          INTEGER PRIMARY KEY AUTOINCREMENT,  -- submission order: the FIFO order to resume in
    id           TEXT NOT NULL UNIQUE,
    status       TEXT NOT NULL,                      -- queued | running | succeeded | failed | cancelled
    request      TEXT NOT NULL,                      -- GenerationRequest as JSON, seed fixed at submission
    total        INTEGER NOT NULL,
    adapter      TEXT,
    lora_scale   REAL NOT NULL,
    created_at   REAL NOT NULL,
    started_at   REAL,
    finished_at  REAL,
    attempts     INTEGER NOT NULL DEFAULT 0,         -- times a worker started it
    record       TEXT,                               -- the finished job as GET /api/jobs/{id} shows it
    image        TEXT,                               -- file name under images/ (succeeded jobs)
    image_bytes  INTEGER NOT NULL DEFAULT 0,
    image_sha256 TEXT                                -- checked when the image is served (NULL: written by schema 1)
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""

_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_LOCKED = {"SQLITE_BUSY", "SQLITE_LOCKED"}


def classify(exc: sqlite3.Error) -> str:
    """``locked``, ``full``, ``damaged`` or ``io`` (see the module docs)."""
    name = getattr(exc, "sqlite_errorname", "") or ""  # Python 3.11+; the message below otherwise
    base = "_".join(name.split("_")[:2])  # SQLITE_BUSY_SNAPSHOT -> SQLITE_BUSY
    text = str(exc).lower()
    if base in _DAMAGED or "not a database" in text or "malformed" in text or "no such table: jobs" in text:
        return "damaged"
    if base in _LOCKED or "locked" in text or "busy" in text:
        return "locked"
    if base == "SQLITE_FULL" or "disk is full" in text or "database or disk is full" in text:
        return "full"
    return "io"


def describe(kind: str, exc: BaseException) -> str:
    """A client-safe sentence for a fault (no server path: SQLite's messages name none)."""
    return {
        "locked": "the job database is locked by another process",
        "full": "the disk holding the data folder is full",
        "damaged": "the job database is damaged",
    }.get(kind, f"the job database cannot be used ({exc})")


def connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
    db.row_factory = sqlite3.Row
    return db


class JobDatabase:
    """One open connection to ``data_dir/jobs.sqlite3``; the caller (the store) serializes its use."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / NAME
        self.conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        #: our own read-only descriptor of the database file, for the header check. Never opened and closed per
        #: check: closing any descriptor of a file drops every POSIX lock this process holds on it, SQLite's too
        self._fd: int | None = None

    # ------------------------------------------------------------------ start-up
    def open(self) -> None:
        """Open (or create) the database. A damaged file is moved aside (logged) and a new one started; what cannot
        be fixed here (a folder that cannot be written, a newer schema) is a ``ConfigError`` naming the fix."""
        try:
            self._open_file()
        except sqlite3.Error as exc:
            if classify(exc) != "damaged":
                raise ConfigError(f"cannot open the job database {self.path} ({exc}); set FLUX_DATA_DIR to a "
                                  "writable folder") from exc
            try:
                self.replace("damaged", f"cannot be read at start-up ({exc})")
            except (OSError, sqlite3.Error) as again:
                raise ConfigError(f"the job database {self.path} cannot be read ({exc}) and a new one could not be "
                                  f"started in its place ({again}); set FLUX_DATA_DIR to a writable folder") from again

    def _open_file(self) -> None:
        db = connect(self.path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a 202 means the job is on disk, even across a power cut
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"{self.path} was written by a newer flux-service (schema {version}, this one "
                                  f"reads {SCHEMA_VERSION}); upgrade, or set FLUX_DATA_DIR elsewhere")
            db.executescript(_SCHEMA)
            columns = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
            if "image_sha256" not in columns:  # schema 1
                db.execute("ALTER TABLE jobs ADD COLUMN image_sha256 TEXT")
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        self.conn = db
        self._identity = self._stat()
        self._fd = os.open(self.path, os.O_RDONLY) if hasattr(os, "pread") else None

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
        if self._fd is not None:  # after SQLite let go of its locks (see ``_fd``)
            os.close(self._fd)
            self._fd = None

    # ------------------------------------------------------------------ faults
    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def vanished(self) -> str | None:
        """Why the open file is no longer the one at the path (deleted, replaced), or None."""
        if self.conn is None or self._identity is None:
            return None
        now = self._stat()
        if now is None:
            return "was deleted"
        if now != self._identity:
            return "was replaced by another file"
        return None

    def overwritten(self) -> str | None:
        """Why the files on disk are no longer SQLite's (the database's or the WAL's header overwritten), or None.
        Cheap (two small reads), so checked before every use: the open connection may go on working from what it
        holds in memory while everything it writes would be unreadable at the next start."""
        if self._fd is None or not hasattr(os, "pread"):  # (Windows: no check)
            return None
        try:
            head = os.pread(self._fd, 16, 0)
            if len(head) == 16 and head != b"SQLite format 3\x00":
                return "was overwritten (its header is not SQLite's)"
            wal = Path(f"{self.path}-wal")  # SQLite locks no part of the WAL file: opening it here is harmless
            if wal.exists() and wal.stat().st_size >= 32:
                with open(wal, "rb") as fh:
                    if int.from_bytes(fh.read(4), "big") not in _WAL_MAGIC:
                        return "was overwritten (its write-ahead log's header is not SQLite's)"
        except OSError:
            return None  # gone: ``vanished`` says so
        return None

    def confirm_damaged(self) -> bool:
        """The open connection reported damage: does a fresh connection see it too? (A connection can also fail
        for a moment, e.g. while another process rewrites the WAL index; that is not a reason to start over.)"""
        try:
            db = connect(self.path)
            try:
                if db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone() is None:
                    return True
                return db.execute("PRAGMA quick_check").fetchone()[0] != "ok"
            finally:
                db.close()
        except sqlite3.Error as exc:
            return classify(exc) == "damaged"

    def reopen(self) -> None:
        """A new connection to the same file (the old one had a passing fault)."""
        self.close()
        self._open_file()

    def replace(self, why: str, detail: str) -> list[str]:
        """Put a new database at the path: what the open connection can still read is copied into it (SQLite's
        backup API, the copy checked before it is used), else it starts empty. ``why``: ``damaged`` or
        ``vanished``; whatever is left at the path is moved aside (``jobs.sqlite3.damaged-<time>``, or
        ``.replaced-<time>``). Returns the names the old files were moved to (in the data folder); logs it."""
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        copy = self.data_dir / f"{NAME}.rebuilding"
        copied = self.conn is not None and self._backup_to(copy)
        self.close()
        moved = []
        for suffix in ("", *COMPANIONS):
            src = self.data_dir / (NAME + suffix)
            if src.exists():
                dst = self.data_dir / f"{NAME}.{'damaged' if why == 'damaged' else 'replaced'}-{stamp}{suffix}"
                os.replace(src, dst)
                moved.append(dst.name)
        if copied:
            os.replace(copy, self.path)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._open_file()
        if why == "damaged":
            logger.error("job store: the job database %s %s; moved aside as %s and %s", self.path, detail,
                         ", ".join(moved) or "(nothing left to move)",
                         "recreated it from the open connection (nothing lost)" if copied else
                         "started a new one (jobs in memory are written again; finished jobs recorded only in the "
                         "damaged file are forgotten)")
        else:
            logger.error("job store: the job database %s %s while the service ran; %s%s", self.path, detail,
                         "recreated it from the open connection (nothing lost)" if copied else
                         "started a new one (jobs in memory are written again)",
                         f"; what was at its place is moved aside as {', '.join(moved)}" if moved else "")
        return moved

    def _backup_to(self, target: Path) -> bool:
        target.unlink(missing_ok=True)
        try:
            dest = sqlite3.connect(target)
            try:
                self.conn.backup(dest)
                dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to rename into place
                sound = (dest.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone()
                         is not None and dest.execute("PRAGMA quick_check").fetchone()[0] == "ok")
            finally:
                dest.close()
            if not sound:
                logger.warning("job store: what the open connection reads is damaged too; starting a new database")
                target.unlink(missing_ok=True)
            return sound
        except sqlite3.Error as exc:
            logger.warning("job store: could not copy the open database (%s); starting a new one", exc)
            target.unlink(missing_ok=True)
            return False
