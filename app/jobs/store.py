"""The durable job store: one SQLite file and one folder of PNGs under ``settings.data_dir``.

Why SQLite (standard library ``sqlite3``): accepted jobs must survive a restart, so a 202 has to mean "on
disk". SQLite gives atomic, fsync'd commits in one local file with no server to run or configure, it ships
with Python, and one service process writes a few rows per image (nowhere near its limits). Why images as
files and not BLOBs: a finished job must cost no memory, and a file is served and deleted without touching the
database; the row holds its name and size so retention can bound the folder by bytes.

Who writes: the worker thread (the job started, was interrupted, finished) and the event loop (a job was
accepted); one connection behind one lock. Jobs that are queued or running also live in memory (``_live``:
the ``Job`` objects the worker and the event streams share); a finished job is only a row and a file, read
back as a ``StoredJob`` when asked for.

Several processes may open one folder at once (a Ray rolling update starts the next ingress while the previous
one drains; several ingress replicas; two services on one host): SQLite's WAL mode lets them read while one
writes, and a busy timeout makes a writer wait for another's commit instead of failing. Each unfinished job has
an *owner*, the store that accepted or took it over (``app/jobs/owners.py``): only the owner runs it, and a
process takes over only jobs whose owner is gone or let them go (``claim_orphans``). A job another live process
holds is read from its row (``RemoteJob``: state, progress, newest preview) and cancelled through it.
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
from app.jobs.owners import OwnerLock, legacy_service_running, new_owner_id, owner_alive
from app.jobs.remote import RemoteJob
from pipelines.errors import ConfigError
from pipelines.types import GenerationInfo

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 2
#: how long a write waits for another process's transaction before it fails (SQLite's busy timeout)
BUSY_TIMEOUT_S = 10.0
#: progress (step, replica, newest preview) is written at most this often per job, for readers in other processes
PROGRESS_EVERY_S = 0.5
#: image files no row names are removed at start-up only when older than this: a younger one may be a file
#: another process sharing the folder has written and not recorded yet
ORPHAN_AGE_S = 600.0
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
    cancel       TEXT                                -- a DELETE received by another process: its message
);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
"""
#: schema version -> statements that bring the one before it up to it
_MIGRATIONS = {
    2: ["ALTER TABLE jobs ADD COLUMN owner TEXT", "ALTER TABLE jobs ADD COLUMN step INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN replica TEXT", "ALTER TABLE jobs ADD COLUMN preview TEXT",
        "ALTER TABLE jobs ADD COLUMN cancel TEXT"],
}


def _statements(script: str) -> list[str]:
    """``script``'s statements one by one (``executescript`` would commit the transaction they must run in)."""
    out, buffer = [], ""
    for line in script.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            out.append(buffer)
            buffer = ""
    return out


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
        self._db: sqlite3.Connection | None = None
        #: this store's name in the ``owner`` column; its lock file says it is alive (app/jobs/owners.py)
        self.owner = new_owner_id()
        self._owner_lock: OwnerLock | None = None
        self._progress_at: dict[str, float] = {}  # job id -> when its progress was last written

    @classmethod
    def open(cls, settings) -> "JobStore":
        store = cls(settings.data_dir, ttl_s=settings.job_ttl_s, max_kept=settings.max_jobs_kept,
                    max_bytes=settings.max_jobs_bytes)
        store._open()
        return store

    def _open(self) -> None:
        try:
            self.images.mkdir(parents=True, exist_ok=True)
            self._owner_lock = OwnerLock(self.data_dir, self.owner).acquire()
        except OSError as exc:
            raise ConfigError(f"cannot create the data folder {self.data_dir} ({exc}); set FLUX_DATA_DIR to a "
                              "writable folder") from exc
        try:
            self._open_db()
        except BaseException:
            self.close()  # release the owner lock
            raise

    def _open_db(self) -> None:
        path = self.data_dir / "jobs.sqlite3"
        try:
            db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open the job database in {self.data_dir} ({exc}); set FLUX_DATA_DIR to a "
                              "writable folder") from exc
        db.row_factory = sqlite3.Row
        try:
            db.execute("PRAGMA journal_mode=WAL")  # readers in other processes never wait for a writer
            db.execute("PRAGMA synchronous=FULL")  # a 202 means the job is on disk, even across a power cut
            db.execute("BEGIN IMMEDIATE")  # one process at a time creates or upgrades the schema
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise ConfigError(f"{path} was written by a newer flux-service (schema {version}, this one reads "
                                      f"{SCHEMA_VERSION}); upgrade, or set FLUX_DATA_DIR elsewhere")
                exists = db.execute("SELECT 1 FROM sqlite_master WHERE name='jobs'").fetchone() is not None
                if not exists:
                    for statement in _statements(_SCHEMA):
                        db.execute(statement)
                else:
                    for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                        for statement in _MIGRATIONS[v]:
                            db.execute(statement)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            db.close()
            raise ConfigError(f"the job database {path} cannot be read ({exc}); move it aside to start with an empty "
                              "job store") from exc
        except BaseException:
            db.close()
            raise
        self._db = db
        self._sweep_orphans()
        self.prune()

    def close(self) -> None:
        """Let go of this store's unfinished jobs (the next start, or another process sharing the folder, takes
        them over), then of the database and the owner lock."""
        with self._lock:
            if self._db is not None:
                try:
                    self._db.execute("UPDATE jobs SET owner=NULL WHERE owner=? AND record IS NULL", (self.owner,))
                except sqlite3.Error as exc:  # the lock below goes with the process anyway: nothing is stranded
                    logger.warning("job store: could not let go of its unfinished jobs (%s)", exc)
                self._db.close()
                self._db = None
            self._live.clear()
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None

    # ------------------------------------------------------------------ the worker's journal
    def accepted(self, job: Job) -> None:
        """Persist a new job before it enters the queue: once the client has its 202, a restart keeps it."""
        request = json.dumps(asdict(job.request), ensure_ascii=False, default=str)
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO jobs (id, status, request, total, adapter, lora_scale, created_at, owner) "
                    "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?)",
                    (job.id, request, job.total, job.adapter, job.lora_scale, job.created_at, self.owner))
                self._live[job.id] = job
        except sqlite3.Error as exc:
            logger.error("job store: could not record job %s: %s", job.id, exc)
            raise StorageError(f"the job could not be saved ({exc}); it was not queued") from exc

    def adopt(self, job: Job) -> None:
        """A job this store claimed (``resume``): known again, already on disk."""
        with self._lock:
            self._live[job.id] = job

    def started(self, job: Job) -> None:
        job.attempts += 1
        self._write("UPDATE jobs SET status='running', started_at=?, attempts=?, step=0, replica=?, preview=NULL "
                    "WHERE id=?", (job.started_at, job.attempts, job.replica, job.id))

    def progressed(self, job: Job) -> None:
        """Step, replica and newest preview, for readers in other processes: at most every ``PROGRESS_EVERY_S``
        per job (and always the last step), so a GPU's step rate costs no disk traffic."""
        now = time.monotonic()
        if now - self._progress_at.get(job.id, 0.0) < PROGRESS_EVERY_S and job.step < job.total:
            return
        self._progress_at[job.id] = now
        preview = json.dumps(job.preview) if job.preview is not None else None
        self._write("UPDATE jobs SET step=?, replica=?, preview=? WHERE id=?", (job.step, job.replica, preview, job.id))

    def interrupted(self, job: Job) -> None:
        """The service stopped it at its shutdown grace: back to queued, to run again after the next start."""
        self._write("UPDATE jobs SET status='queued', started_at=NULL, step=0, preview=NULL WHERE id=?", (job.id,))

    def released(self, job: Job) -> None:
        """This process will not run it (shutting down): another process sharing the folder, or the next start,
        takes it over now rather than when this one has exited."""
        self._write("UPDATE jobs SET owner=NULL WHERE id=? AND owner=? AND record IS NULL", (job.id, self.owner))
        with self._lock:
            self._live.pop(job.id, None)
        self._progress_at.pop(job.id, None)

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
        self._write("UPDATE jobs SET status=?, started_at=?, finished_at=?, record=?, image=?, image_bytes=?, "
                    "step=?, preview=NULL WHERE id=?",
                    (job.status, job.started_at, job.finished_at, json.dumps(job.to_dict(), ensure_ascii=False),
                     image, job.image_bytes if image else 0, job.step, job.id))
        with self._lock:
            self._live.pop(job.id, None)
        self._progress_at.pop(job.id, None)
        self.prune()

    def _write(self, sql: str, params: tuple) -> int:
        try:
            with self._lock:
                return self._db.execute(sql, params).rowcount
        except sqlite3.Error:
            logger.exception("job store: write failed (%s)", sql.split(" SET")[0])
            return 0

    # ------------------------------------------------------------------ sharing the folder
    def owner_alive(self, owner: str | None) -> bool:
        if owner is None:
            return False
        return owner == self.owner or owner_alive(self.data_dir, owner)

    def claim_orphans(self) -> list[sqlite3.Row]:
        """Take over the unfinished jobs whose owner is gone or let them go, in submission order; each row is
        claimed with one conditional UPDATE, so of several processes looking at once exactly one gets it."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE record IS NULL AND (owner IS NULL OR owner != ?) "
                                    "ORDER BY seq", (self.owner,)).fetchall()
        alive: dict[str | None, bool] = {}
        claimed = []
        for row in rows:
            owner = row["owner"]
            if owner not in alive:
                alive[owner] = legacy_service_running(self.data_dir) if owner is None else self.owner_alive(owner)
            if alive[owner] or not self.claim(row["id"], owner):
                continue
            claimed.append(self.row(row["id"]))
        return [r for r in claimed if r is not None]

    def claim(self, job_id: str, previous_owner: str | None) -> bool:
        """Make an unfinished job this store's, if it still belongs to ``previous_owner`` (no one else took it)."""
        return self._write("UPDATE jobs SET owner=? WHERE id=? AND owner IS ? AND record IS NULL",
                           (self.owner, job_id, previous_owner)) == 1

    def request_cancel(self, job_id: str, message: str) -> None:
        """A DELETE for a job another live process runs: its owner reads this (``cancel_requests``) and stops it."""
        self._write("UPDATE jobs SET cancel=? WHERE id=? AND record IS NULL", (message, job_id))

    def cancel_requests(self) -> list[tuple[str, str]]:
        """(job id, message) of this store's unfinished jobs that a DELETE in another process asked to stop."""
        with self._lock:
            if self._db is None:
                return []
            return [(r["id"], r["cancel"]) for r in self._db.execute(
                "SELECT id, cancel FROM jobs WHERE owner=? AND cancel IS NOT NULL AND record IS NULL", (self.owner,))]

    def row(self, job_id: str) -> sqlite3.Row | None:
        with self._lock:
            return self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone() if self._db else None

    # ------------------------------------------------------------------ reads
    def get(self, job_id: str) -> Job | StoredJob | RemoteJob:
        with self._lock:
            live = self._live.get(job_id)
            if live is not None:
                return live
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone() if self._db else None
        if row is not None and row["record"] is None:
            return RemoteJob.from_row(row, self)  # held by another process (or let go and not taken yet)
        if row is None or self._expired(row):
            if row is not None:
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
        for r in doomed:  # after the commit: a crash here leaves an orphan file, swept at a later start
            if r["image"]:
                (self.images / r["image"]).unlink(missing_ok=True)
        logger.debug("job store: forgot %d finished job(s)", len(doomed))
        return len(doomed)

    def _sweep_orphans(self) -> None:
        """Files no row names (a crash between writing an image and recording it, or half-written temps), once
        they are old enough that no process sharing the folder can still be about to record them."""
        with self._lock:
            named = {r[0] for r in self._db.execute("SELECT image FROM jobs WHERE image IS NOT NULL")}
        cutoff = time.time() - ORPHAN_AGE_S
        for path in self.images.iterdir():
            try:
                if path.name not in named and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
