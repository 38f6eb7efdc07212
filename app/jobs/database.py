"""The job database file (``FLUX_DATA_DIR/jobs.sqlite3``): open it, tell a passing fault from a damaged file, and
put a new file in place of one that was damaged or deleted.

Why a module of its own: the job store (``store.py``) decides what to keep in memory and when to retry; this
module alone knows SQLite's files (the database, its ``-wal`` and ``-shm`` companions) and error codes.

What an error means (``classify``):

- ``locked``: another process holds the write lock past the busy timeout (SQLITE_BUSY/LOCKED): wait and retry.
- ``full``: the disk is full (SQLITE_FULL): retry once space returns.
- ``damaged``: the file is not a database, is malformed, or lost its table (overwritten, truncated). Confirmed on
  a fresh connection (``confirm_damaged``), then the files are moved aside, named in the log, and a new database
  takes their place (``replace``): a copy of what the open connection can still read, else an empty one.
- ``io``: anything else (an I/O error, a read-only file): retry.

A database file that vanished (deleted while the service runs) keeps working for the connection that has it
open, and everything written after that would be lost at the next start; so would everything written into a
file whose header was overwritten. So the store checks the file (its identity, device and inode, and its
header) before it uses it, and recreates a deleted file from the open connection (SQLite's backup API). Several
processes may share the folder (``app/jobs/owners.py``): a file that *another* process put at the path (it
replaced a damaged or deleted one) is simply used (``switch``), and a new file is put in place with
``os.link`` (never over a file someone else put there a moment ago).
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
#: how long one statement waits for another process's write lock before it counts as a fault (processes sharing
#: the folder hold it for one statement; longer means something else holds it)
BUSY_TIMEOUT_S = 5.0

SCHEMA_VERSION = 3  # 2: owner, step, replica, preview, cancel (a shared folder); 3: image_sha256
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
    owner        TEXT,                               -- the store (process) that runs it; NULL: let go
    step         INTEGER NOT NULL DEFAULT 0,         -- progress, for readers in other processes
    replica      TEXT,                               -- where it runs (Ray replica id, "local")
    preview      TEXT,                               -- the newest live preview (JSON), while it runs
    cancel       TEXT,                               -- a DELETE received by another process: its message
    image_sha256 TEXT                                -- checked when the image is served (NULL: an older row)
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""
#: columns added since schema 1, as ``ALTER TABLE`` adds them (a table missing any gets it, whatever its version)
_ADDED_COLUMNS = {"owner": "TEXT", "step": "INTEGER NOT NULL DEFAULT 0", "replica": "TEXT", "preview": "TEXT",
                  "cancel": "TEXT", "image_sha256": "TEXT"}

_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
_WAL_MAGIC = (0x377F0682, 0x377F0683)

#: (device, inode) -> a read-only descriptor of that database file, for the header check; opened once per file and
#: never closed while the process runs: closing *any* descriptor of a file drops every POSIX lock this process
#: holds on it, those of SQLite's connections included (SQLite's "how to corrupt" list, section 2.2)
_HEADER_FDS: dict[tuple[int, int], int] = {}


def classify(exc: sqlite3.Error) -> str:
    """``locked``, ``full``, ``damaged`` or ``io`` (see the module docs)."""
    name = getattr(exc, "sqlite_errorname", "") or ""  # Python 3.11+; the message below otherwise
    base = "_".join(name.split("_")[:2])  # SQLITE_BUSY_SNAPSHOT -> SQLITE_BUSY
    text = str(exc).lower()
    if base in _DAMAGED or "not a database" in text or "malformed" in text or "no such table: jobs" in text:
        return "damaged"
    if base in ("SQLITE_BUSY", "SQLITE_LOCKED") or "locked" in text or "busy" in text:
        return "locked"
    if base == "SQLITE_FULL" or "disk is full" in text:
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


def _sound(path: Path) -> bool:
    """A job database a fresh connection reads whole (the table there, ``quick_check`` ok)."""
    try:
        db = connect(path)
        try:
            return (db.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='jobs'").fetchone() is not None
                    and db.execute("PRAGMA quick_check").fetchone()[0] == "ok")
        finally:
            db.close()
    except sqlite3.Error:
        return False


class JobDatabase:
    """One open connection to ``data_dir/jobs.sqlite3``; the caller (the store) serializes its use."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)
        self.path = self.data_dir / NAME
        self.conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

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
            db.execute("PRAGMA journal_mode=WAL")  # readers in other processes never wait for a writer
            db.execute("PRAGMA synchronous=FULL")  # a 202 means the job is on disk, even across a power cut
            db.execute("BEGIN IMMEDIATE")  # one process at a time creates or upgrades the schema
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ConfigError(f"{self.path} was written by a newer flux-service (schema {version}, this one "
                                      f"reads {SCHEMA_VERSION}); upgrade, or set FLUX_DATA_DIR elsewhere")
                if db.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchone() is None:
                    for statement in _statements(_SCHEMA):
                        db.execute(statement)
                else:
                    have = {r["name"] for r in db.execute("PRAGMA table_info(jobs)")}
                    for column, kind in _ADDED_COLUMNS.items():
                        if column not in have:
                            db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
                raise
        except BaseException:
            db.close()
            raise
        self.conn = db
        self._identity = self._stat()
        _header_fd(self.path, self._identity)

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None

    # ------------------------------------------------------------------ faults
    def _stat(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def vanished(self) -> str | None:
        """``deleted`` or ``replaced`` (another file is at the path now), or None."""
        if self.conn is None or self._identity is None:
            return None
        now = self._stat()
        if now is None:
            return "deleted"
        return "replaced" if now != self._identity else None

    def overwritten(self) -> str | None:
        """Why the open file is no longer SQLite's (its header, or its write-ahead log's, overwritten), or None.
        Cheap (two small reads), so checked before every use: the open connection may go on working from what it
        holds in memory while everything it writes would be unreadable at the next start."""
        fd = _HEADER_FDS.get(self._identity) if self._identity is not None else None
        if fd is None or not hasattr(os, "pread"):  # (Windows: no check)
            return None
        try:
            head = os.pread(fd, 16, 0)
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
        return not _sound(self.path)

    def path_is_sound(self) -> bool:
        return _sound(self.path)

    def switch(self, detail: str) -> None:
        """Use the database now at the path (another process put it there, or a passing fault): reconnect."""
        self.close()
        self._open_file()
        logger.warning("job store: the job database %s %s; using the file now there", self.path, detail)

    def recreate(self, detail: str) -> bool:
        """The file was deleted: put a copy of what the open connection reads at the path (nothing lost). True when
        that worked; False when a new empty database had to be started (the copy failed)."""
        copy = self.data_dir / f"{NAME}.rebuilding-{os.getpid()}"
        copied = self.conn is not None and self._backup_to(copy)
        self.close()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        placed = False
        if self._stat() is None:  # (else another process sharing the folder recreated it already: use that one)
            for suffix in COMPANIONS:  # the deleted file's own, if left: they must not be applied to the new one
                self._move_aside(Path(f"{self.path}{suffix}"), "deleted")
            placed = copied and self._place(copy)
        copy.unlink(missing_ok=True)
        self._open_file()
        logger.error("job store: the job database %s was %s while the service ran; %s", self.path, detail,
                     "recreated it from the open connection (nothing lost)" if placed else
                     "started a new one (jobs in memory are written again)")
        return placed

    def replace(self, why: str, detail: str) -> list[str]:
        """The file is damaged: move it (and its WAL and shared-memory files) aside as ``jobs.sqlite3.damaged-<time>``
        and put a new database at the path: a copy of what the open connection can still read (checked), else an
        empty one. Returns the names the files were moved to (in the data folder); logs it."""
        copy = self.data_dir / f"{NAME}.rebuilding-{os.getpid()}"
        copied = self.conn is not None and self._backup_to(copy)
        mine = self._identity
        self.close()
        moved = []
        if mine is None or self._stat() in (mine, None) or not self.path_is_sound():  # not someone else's new file
            for suffix in ("", *COMPANIONS):
                name = self._move_aside(Path(f"{self.path}{suffix}"), why)
                if name:
                    moved.append(name)
        placed = copied and self._place(copy)
        copy.unlink(missing_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._open_file()
        logger.error("job store: the job database %s %s; moved aside as %s and %s", self.path, detail,
                     ", ".join(moved) or "(nothing: another process had replaced it already)",
                     "recreated it from the open connection (nothing lost)" if placed else
                     "started a new one (jobs in memory are written again; finished jobs recorded only in the "
                     "damaged file are forgotten)")
        return moved

    def _move_aside(self, src: Path, why: str) -> str | None:
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        dst = self.data_dir / f"{NAME}.{why}-{stamp}{src.name[len(NAME):]}"
        try:
            os.replace(src, dst)
        except FileNotFoundError:
            return None
        return dst.name

    def _place(self, copy: Path) -> bool:
        """Put ``copy`` at the path unless another process put a file there meanwhile (then that one is used)."""
        try:
            os.link(copy, self.path)  # fails if the path exists: never over another process's new file
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: a rename, checked first (a small race, no better way)
            if self.path.exists():
                return False
            os.replace(copy, self.path)
            return True

    def _backup_to(self, target: Path) -> bool:
        target.unlink(missing_ok=True)
        try:
            dest = sqlite3.connect(target)
            try:
                self.conn.backup(dest)
                dest.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to link into place
            finally:
                dest.close()
        except sqlite3.Error as exc:
            logger.warning("job store: could not copy the open database (%s); starting a new one", exc)
            target.unlink(missing_ok=True)
            return False
        if not _sound(target):
            logger.warning("job store: what the open connection reads is damaged too; starting a new database")
            target.unlink(missing_ok=True)
            return False
        return True


def _header_fd(path: Path, identity: tuple[int, int] | None) -> None:
    """Open the header-check descriptor of this file once (see ``_HEADER_FDS``)."""
    if identity is None or identity in _HEADER_FDS or not hasattr(os, "pread"):
        return
    try:
        _HEADER_FDS[identity] = os.open(path, os.O_RDONLY)
    except OSError:
        pass


def _statements(script: str) -> list[str]:
    """``script``'s statements one by one (``executescript`` would commit the transaction they must run in)."""
    out, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer)
            buffer = ""
    return out


# the job's whole state (``cancel`` is another process's to write: never overwritten here)
UPSERT = """
INSERT INTO jobs (id, status, request, total, adapter, lora_scale, created_at, started_at, finished_at, attempts,
                  record, image, image_bytes, image_sha256, owner, step, replica, preview)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(id) DO UPDATE SET status=excluded.status, started_at=excluded.started_at,
    finished_at=excluded.finished_at, attempts=excluded.attempts, record=excluded.record, image=excluded.image,
    image_bytes=excluded.image_bytes, image_sha256=excluded.image_sha256, owner=excluded.owner,
    step=excluded.step, replica=excluded.replica, preview=excluded.preview
"""
