"""The durable job store: one SQLite file and one folder of PNGs under ``settings.data_dir``.

Why SQLite (standard library ``sqlite3``): accepted jobs must survive a restart, so a 202 has to mean "on
disk". SQLite gives atomic, fsync'd commits in one local file with no server to run or configure, it ships
with Python, and one service process writes a few rows per image (nowhere near its limits). Why images as
files and not BLOBs: a finished job must cost no memory, and a file is served and deleted without touching the
database; the row holds its name and size so retention can bound the folder by bytes.

Who writes: the worker thread (the job started, was interrupted, finished) and the event loop (a job was
accepted); one connection behind one lock. Jobs that are queued or running also live in memory (``_live``:
the ``Job`` objects the worker and the event streams share); a finished job is only a row and a file, read
back as a ``StoredJob`` when asked for. One running service per data folder: the folder is locked
(``flock``) while the store is open, because two services would both resume the same queued jobs.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path

from app.errors import NotFound, StorageError
from app.jobs import retention
from app.jobs.job import Job
from pipelines.errors import ConfigError
from pipelines.types import GenerationInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
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
    image_bytes  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""


class StoredJob:
    """A finished job read back from its row: the read-only face of ``Job`` that the routes use."""

    kind = "job"
    done = True
    stop_reason = None
    suspended = None

    def __init__(self, row: sqlite3.Row) -> None:
        self.id: str = row["id"]
        self.status: str = row["status"]
        self.created_at: float = row["created_at"]
        self.started_at: float | None = row["started_at"]
        self.finished_at: float | None = row["finished_at"]
        self._record: dict = json.loads(row["record"])
        self.info = _info_from(self._record.get("info"))
        self.replica: str | None = self._record.get("replica")  # X-Replica of the image route

    def to_dict(self) -> dict:
        return dict(self._record)

    def snapshot(self) -> tuple[dict, int]:
        return self.to_dict(), 0

    def events_since(self, index: int) -> list:
        return []

    async def wait_done(self, timeout: float | None) -> bool:
        return True


def _info_from(data: dict | None) -> GenerationInfo | None:
    """Tolerant of rows written by an older or newer version (fields added or removed since)."""
    if data is None:
        return None
    known = {f.name for f in fields(GenerationInfo)}
    values = {name: data.get(name) for name in known}
    values["warnings"] = values["warnings"] or []
    values["timings"] = values["timings"] or {}
    return GenerationInfo(**values)


class JobStore:
    """Where ``/api/jobs/{id}`` finds a job; also the worker's journal (``accepted``/``started``/...)."""

    def __init__(self, data_dir: Path, *, ttl_s: float, max_kept: int, max_bytes: int) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.images = self.data_dir / "images"
        self.ttl_s, self.max_kept, self.max_bytes = ttl_s, max_kept, max_bytes
        self._lock = threading.RLock()
        self._live: dict[str, Job] = {}
        self._lock_file = None
        self._db: sqlite3.Connection | None = None

    @classmethod
    def open(cls, settings) -> "JobStore":
        store = cls(settings.data_dir, ttl_s=settings.job_ttl_s, max_kept=settings.max_jobs_kept,
                    max_bytes=settings.max_jobs_bytes)
        store._open()
        return store

    def _open(self) -> None:
        try:
            self.images.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the data folder {self.data_dir} ({exc}); set FLUX_DATA_DIR to a "
                              "writable folder") from exc
        self._lock_folder()
        try:
            self._open_db()
        except BaseException:
            self.close()  # release the folder lock
            raise

    def _open_db(self) -> None:
        try:
            db = sqlite3.connect(self.data_dir / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the job database in {self.data_dir} ({exc}); set FLUX_DATA_DIR to a "
                              "writable folder") from exc
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a 202 means the job is on disk, even across a power cut
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            db.close()
            raise ConfigError(f"the job database {self.data_dir / 'jobs.sqlite3'} cannot be read ({exc}); move it "
                              "aside to start with an empty job store") from exc
        if version > SCHEMA_VERSION:
            db.close()
            raise ConfigError(f"{self.data_dir / 'jobs.sqlite3'} was written by a newer flux-service (schema "
                              f"{version}, this one reads {SCHEMA_VERSION}); upgrade, or set FLUX_DATA_DIR elsewhere")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db = db
        self._sweep_orphans()
        self.prune()

    def _lock_folder(self) -> None:
        try:
            import fcntl
        except ImportError:  # Windows: no folder lock
            return
        handle = open(self.data_dir / "lock", "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "?"
            handle.close()
            raise ConfigError(f"the data folder {self.data_dir} is in use by another flux-service process (pid "
                              f"{owner}); each service needs its own FLUX_DATA_DIR") from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock
            self._lock_file = None

    # ------------------------------------------------------------------ the worker's journal
    def accepted(self, job: Job) -> None:
        """Persist a new job before it enters the queue: once the client has its 202, a restart keeps it."""
        request = json.dumps(asdict(job.request), ensure_ascii=False, default=str)
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO jobs (id, status, request, total, adapter, lora_scale, created_at) "
                    "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                    (job.id, request, job.total, job.adapter, job.lora_scale, job.created_at))
                self._live[job.id] = job
        except sqlite3.Error as exc:
            logger.error("job store: could not record job %s: %s", job.id, exc)
            raise StorageError(f"the job could not be saved ({exc}); it was not queued") from exc

    def adopt(self, job: Job) -> None:
        """A job read back at start-up (``resume``): known again, already on disk."""
        with self._lock:
            self._live[job.id] = job

    def started(self, job: Job) -> None:
        job.attempts += 1
        self._write("UPDATE jobs SET status='running', started_at=?, attempts=? WHERE id=?",
                    (job.started_at, job.attempts, job.id))

    def interrupted(self, job: Job) -> None:
        """The service stopped it at its shutdown grace: back to queued, to run again after the next start."""
        self._write("UPDATE jobs SET status='queued', started_at=NULL WHERE id=?", (job.id,))

    def save_image(self, job: Job, png: bytes) -> None:
        """Write the PNG before the job is marked succeeded (temp file + rename: never half a file)."""
        path = self.image_path(job.id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(png)
        os.replace(tmp, path)
        job.image_bytes = len(png)

    def finished(self, job: Job) -> None:
        """Record the terminal state, forget the in-memory job (its PNG is a file now), apply retention."""
        image = f"{job.id}.png" if job.status == "succeeded" else None
        self._write("UPDATE jobs SET status=?, started_at=?, finished_at=?, record=?, image=?, image_bytes=? "
                    "WHERE id=?", (job.status, job.started_at, job.finished_at,
                                   json.dumps(job.to_dict(), ensure_ascii=False), image,
                                   job.image_bytes if image else 0, job.id))
        with self._lock:
            self._live.pop(job.id, None)
        self.prune()

    def _write(self, sql: str, params: tuple) -> None:
        try:
            with self._lock:
                self._db.execute(sql, params)
        except sqlite3.Error:
            logger.exception("job store: write failed (%s)", sql.split(" SET")[0])

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> Job | StoredJob:
        with self._lock:
            live = self._live.get(job_id)
            if live is not None:
                return live
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone() if self._db else None
        if row is None or row["record"] is None or self._expired(row):
            if row is not None and row["record"] is not None:
                self.prune()
            raise NotFound(f"no job {job_id!r}: it never existed or it finished and was forgotten (finished jobs "
                           f"are kept {self.ttl_s:g}s and at most {self.max_kept}), so it may have expired",
                           param="id")
        return StoredJob(row)

    def image_path(self, job_id: str) -> Path:
        return self.images / f"{job_id}.png"

    def read_image(self, job_id: str) -> bytes:
        try:
            return self.image_path(job_id).read_bytes()
        except FileNotFoundError:
            raise NotFound(f"job {job_id!r}: its image was removed from the data folder (retention by count, "
                           "bytes or age), so it may have expired", param="id") from None

    def pending_rows(self) -> list[sqlite3.Row]:
        """Jobs a previous run accepted but did not finish, in submission order."""
        with self._lock:
            return self._db.execute(
                "SELECT * FROM jobs WHERE status IN ('queued', 'running') ORDER BY seq").fetchall()

    def live_count(self) -> int:
        with self._lock:
            return len(self._live)

    def __len__(self) -> int:
        """Jobs known: unfinished ones plus finished ones still kept."""
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]

    def kept_bytes(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COALESCE(SUM(image_bytes), 0) FROM jobs").fetchone()[0]

    # ------------------------------------------------------------------ retention
    def _expired(self, row: sqlite3.Row) -> bool:
        return row["finished_at"] is not None and time.time() - row["finished_at"] > self.ttl_s

    def prune(self) -> int:
        """Forget finished jobs past their TTL or beyond the count/bytes bounds (oldest first)."""
        with self._lock:
            if self._db is None:
                return 0
            rows = self._db.execute("SELECT id, finished_at, image, image_bytes FROM jobs "
                                    "WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, seq DESC").fetchall()
            doomed = retention.to_remove(rows, now=time.time(), ttl_s=self.ttl_s, max_kept=self.max_kept,
                                         max_bytes=self.max_bytes)
            if not doomed:
                return 0
            self._db.executemany("DELETE FROM jobs WHERE id=?", [(r["id"],) for r in doomed])
        for r in doomed:  # after the commit: a crash here leaves an orphan file, swept at the next start
            if r["image"]:
                (self.images / r["image"]).unlink(missing_ok=True)
        logger.debug("job store: forgot %d finished job(s)", len(doomed))
        return len(doomed)

    def _sweep_orphans(self) -> None:
        """Files no row names (a crash between writing an image and recording it, or half-written temps)."""
        with self._lock:
            named = {r[0] for r in self._db.execute("SELECT image FROM jobs WHERE image IS NOT NULL")}
        for path in self.images.iterdir():
            if path.name not in named:
                path.unlink(missing_ok=True)
