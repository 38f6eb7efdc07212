"""The durable job store: one SQLite file and one folder of PNGs under ``settings.data_dir``.

Why SQLite (standard library ``sqlite3``): accepted jobs must survive a restart, so a 202 has to mean "on
disk". SQLite gives atomic, fsync'd commits in one local file with no server to run or configure, it ships
with Python, and one service process writes a few rows per image (nowhere near its limits). Why images as
files and not BLOBs: a finished job must cost no memory, and a file is served and deleted without touching the
database; the row holds its name, size and sha256 (checked when it is served: a damaged file is an error, never
a wrong picture), and retention bounds the folder by bytes.

Who writes: the worker thread (a job started, was interrupted, finished), the event loop's helper threads (a job
was accepted) and the store's own writer thread (retries); one connection behind one lock. Jobs that are queued or
running live in memory too (``_live``: the ``Job`` objects the worker and the event streams share); a finished
job is only a row and a file, read back as a ``StoredJob`` when asked for.

Several processes may open one folder at once (a Ray rolling update starts the next ingress while the previous
one drains; several ingress replicas; two services on one host): SQLite's WAL mode lets them read while one
writes, and a busy timeout makes a writer wait for another's commit instead of failing. Each unfinished job has
an *owner*, the store that accepted or took it over (``app/jobs/owners.py``): only the owner runs it, and a
process takes over only jobs whose owner is gone or let them go (``claim_orphans``). A job another live process
holds is read from its row (``RemoteJob``: state, progress, newest preview) and cancelled through it.

Faults (``app/jobs/database.py`` tells them apart): an accepted job is never forgotten because its database write
failed. A write that fails (another process holds the lock, the disk is full) leaves the job in memory, still
served by ``GET /api/jobs/{id}``, and the writer thread retries every ``RETRY_S`` until it is written;
meanwhile ``fault()`` says why (``/ready`` answers 503 with it) and new jobs are refused with 503
``storage_unavailable``. A damaged database file is moved aside and a new one started with every job in memory;
a database file deleted or replaced under the service is recreated from the open connection.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import asdict
from pathlib import Path

from app.errors import ImageCorrupt, NotFound, StorageError
from app.jobs import retention
from app.jobs.database import UPSERT, JobDatabase
from app.jobs.job import Job
from app.jobs.owners import OwnerLock, new_owner_id
from app.jobs.remote import RemoteJob
from app.jobs.store_claims import StoreClaims
from app.jobs.store_repair import StoreRepair, StoreUnavailable
from app.jobs.stored_job import StoredJob
from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

#: progress (step, replica, newest preview) is written at most this often per job, for readers in other processes
PROGRESS_EVERY_S = 0.5
#: image files no row names are removed at start-up only when older than this: a younger one may be a file
#: another process sharing the folder has written and not recorded yet
ORPHAN_AGE_S = 600.0

def _row(job: Job, owner: str | None) -> tuple:
    """The job's whole state as one row (the same upsert records a new job, a change, or a job again after the
    database was replaced). ``owner``: this store, or None for a job it let go."""
    image = f"{job.id}.png" if job.status == "succeeded" else None
    preview = json.dumps(job.preview) if job.status == "running" and job.preview is not None else None
    return (job.id, job.status, json.dumps(asdict(job.request), ensure_ascii=False, default=str), job.total,
            job.adapter, job.lora_scale, job.created_at, job.started_at, job.finished_at, job.attempts,
            json.dumps(job.to_dict(), ensure_ascii=False) if job.done else None, image,
            job.image_bytes if image else 0, job.image_sha256 if image else None, owner, job.step, job.replica,
            preview)


def write_file(path: Path, data: bytes) -> None:
    """Write ``data`` at ``path`` whole or not at all (temp file + rename); a failed write leaves no temp file
    behind (after ENOSPC a stray partial file would keep the disk full)."""
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class JobStore(StoreRepair, StoreClaims):
    """Where ``/api/jobs/{id}`` finds a job; also the worker's journal (``accepted``/``started``/...)."""

    def __init__(self, data_dir: Path, *, ttl_s: float, max_kept: int, max_bytes: int) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self.images = self.data_dir / "images"
        self.ttl_s, self.max_kept, self.max_bytes = ttl_s, max_kept, max_bytes
        self._db = JobDatabase(self.data_dir)
        self._db_lock = threading.RLock()  # the connection; may be held while taking _mem, never the reverse
        self._mem = threading.Lock()  # _live, _dirty, _fault
        self._live: dict[str, Job] = {}
        self._dirty: dict[str, int] = {}  # job id -> change number: state not yet written (retried)
        self._changes = 0
        self._fault: str | None = None
        self._released: set[str] = set()  # jobs let go (shutting down): written with no owner, then forgotten
        #: this store's name in the ``owner`` column; its lock file says it is alive (app/jobs/owners.py)
        self.owner = new_owner_id()
        self._owner_lock: OwnerLock | None = None
        self._progress_at: dict[str, float] = {}  # job id -> when its progress was last written
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None

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
            self._db.open()
            self._sweep_orphans()
            self.prune()
        except BaseException:
            self.close()  # release the owner lock
            raise
        self._writer = threading.Thread(target=self._write_loop, name="flux-job-store", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Stop the writer, write what is still pending (once more), let go of this store's unfinished jobs (the
        next start, or another process sharing the folder, takes them over), close the database and the owner
        lock."""
        self._stop.set()
        self._wake.set()
        if self._writer is not None:
            self._writer.join(timeout=10)
            self._writer = None
        if self._db.conn is not None and not self._flush():
            with self._mem:
                left = list(self._dirty)
            logger.error("job store: closing with %d job update(s) not written (%s): %s; those jobs run again "
                         "after the next start if their rows say queued or running", len(left), self._fault,
                         ", ".join(left))
        if self._db.conn is not None:
            try:
                self._call(lambda db: db.execute("UPDATE jobs SET owner=NULL WHERE owner=? AND record IS NULL",
                                                 (self.owner,)))
            except StoreUnavailable as exc:  # the lock below goes with the process anyway: nothing is stranded
                logger.warning("job store: could not let go of its unfinished jobs (%s)", exc.reason)
        with self._db_lock:
            self._db.close()
        with self._mem:
            self._live.clear()
        if self._owner_lock is not None:
            self._owner_lock.release()
            self._owner_lock = None

    def _row(self, job: Job) -> tuple:
        return _row(job, None if job.id in self._released else self.owner)

    def _forget(self, job_id: str) -> None:
        """(``_mem`` held) A job whose last state is written and that this process no longer runs."""
        self._live.pop(job_id, None)
        self._released.discard(job_id)
        self._progress_at.pop(job_id, None)

    # ------------------------------------------------------------------ the worker's journal
    def accepted(self, job: Job) -> None:
        """Persist a new job before it enters the queue: once the client has its 202, a restart keeps it.
        Raises ``StorageError`` (503) when it cannot be written now. Recording the same job again is a no-op."""
        with self._mem:
            if job.id in self._live:
                return
        try:
            self._call(lambda db: db.execute(UPSERT, self._row(job)))
        except StoreUnavailable as exc:
            logger.error("job store: could not record job %s: %s", job.id, exc.reason)
            raise StorageError(f"the job could not be saved ({exc.reason}); it was not queued") from None
        with self._mem:
            self._live[job.id] = job

    def discard(self, job: Job) -> None:
        """A job recorded by ``accepted`` that was then not queued (the client got an error): forget it."""
        with self._mem:
            self._live.pop(job.id, None)
            self._dirty.pop(job.id, None)
        try:
            self._call(lambda db: db.execute("DELETE FROM jobs WHERE id=? AND status='queued'", (job.id,)))
        except StoreUnavailable as exc:
            logger.error("job store: job %s was refused but its row could not be removed (%s); it may run after "
                         "the next start", job.id, exc.reason)

    def adopt(self, job: Job) -> None:
        """A job this store claimed (``resume``): known again, already on disk."""
        with self._mem:
            self._live[job.id] = job

    def started(self, job: Job) -> None:
        """A worker starts running it (the row says running: if the service goes down now, it runs again)."""
        job.attempts += 1
        if not job.done:
            job.status = "running"  # as the worker already set it; the journal's word does not depend on that
        self._record(job)

    def progressed(self, job: Job) -> None:
        """Step, replica and newest preview, for readers in other processes: at most every ``PROGRESS_EVERY_S``
        per job (and always the last step), so a GPU's step rate costs no disk traffic. Best effort: skipped
        while the store is failing (the job's end is what must be written, and it is)."""
        now = time.monotonic()
        if now - self._progress_at.get(job.id, 0.0) < PROGRESS_EVERY_S and job.step < job.total:
            return
        self._progress_at[job.id] = now
        with self._mem:
            if self._fault is not None:
                return
        preview = json.dumps(job.preview) if job.preview is not None else None
        try:
            self._call(lambda db: db.execute("UPDATE jobs SET step=?, replica=?, preview=? WHERE id=?",
                                             (job.step, job.replica, preview, job.id)))
        except StoreUnavailable:
            pass

    def interrupted(self, job: Job) -> None:
        """Stopped by a shutdown (the job is queued again, ``Job.suspend``): written as queued, to run again."""
        self._record(job)

    def released(self, job: Job) -> None:
        """This process will not run it (shutting down): another process sharing the folder, or the next start,
        takes it over now rather than when this one has exited. Forgotten here once written."""
        with self._mem:
            if job.id not in self._live:
                return
            self._released.add(job.id)
        self._record(job)

    def finished(self, job: Job) -> None:
        """Record the terminal state; the in-memory job is forgotten once that is written (its PNG is a file)."""
        with self._mem:
            self._released.discard(job.id)  # (cancelled after it was let go: it ends here, owned)
        self._record(job)

    def save_image(self, job: Job, png: bytes) -> None:
        """Write the PNG before the job is marked succeeded; its sha256 goes into the row. Raises OSError (the
        worker fails the job with ``storage_unavailable``); a full disk is a fault until space returns."""
        try:
            write_file(self.image_path(job.id), png)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                self._set_fault("the disk holding the data folder is full")
            raise
        job.image_bytes = len(png)
        job.image_sha256 = hashlib.sha256(png).hexdigest()

    def _record(self, job: Job) -> None:
        """Write the job's state now, or (while the database is failing) keep it for the writer thread."""
        with self._mem:
            self._changes += 1
            self._dirty[job.id] = self._changes
            self._live.setdefault(job.id, job)
            behind = self._fault is not None and len(self._dirty) > 1
        if behind:  # others wait already: keep the order, do not block the worker on a known fault
            self._wake.set()
            return
        self._flush()

    def row(self, job_id: str) -> sqlite3.Row | None:
        """A job's row (None: no such row, or the database cannot be read now)."""
        try:
            return self._call(lambda db: db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        except StoreUnavailable:
            return None

    # ------------------------------------------------------------------ reads
    def live(self, job_id: str) -> Job | None:
        """A job this process runs (queued, running, or finished and not written yet): memory only, safe on the
        event loop."""
        with self._mem:
            return self._live.get(job_id)

    def get(self, job_id: str) -> Job | StoredJob | RemoteJob:
        """Any job; reads the database for the others (so call it from a thread, not the event loop)."""
        live = self.live(job_id)
        if live is not None:
            return live
        try:
            row = self._call(lambda db: db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone())
        except StoreUnavailable as exc:
            raise StorageError(f"job {job_id!r} cannot be looked up now ({exc.reason}); retry later",
                               param="id") from None
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

    def read_image(self, job: Job | StoredJob) -> bytes:
        """The PNG of a succeeded job, checked against the sha256 recorded when it was written."""
        path = self.image_path(job.id)
        try:
            png = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"job {job.id!r}: its image was removed from the data folder (retention by count, "
                           "bytes or age), so it may have expired", param="id") from None
        expected = job.image_sha256
        if expected is not None and hashlib.sha256(png).hexdigest() != expected:
            logger.error("job store: image %s of job %s does not match the sha256 recorded when it was written "
                         "(the file was changed or damaged on disk); not served", path, job.id)
            raise ImageCorrupt(f"job {job.id!r}: its image file in the data folder is damaged (it no longer matches "
                               "the sha256 recorded when it was made); submit the job again", param="id")
        return png

    def live_count(self) -> int:
        with self._mem:
            return len(self._live)

    def __len__(self) -> int:
        """Jobs known: unfinished ones plus finished ones still kept."""
        return self._call(lambda db: db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def kept_bytes(self) -> int:
        return self._call(lambda db: db.execute("SELECT COALESCE(SUM(image_bytes), 0) FROM jobs").fetchone()[0])

    # ------------------------------------------------------------------ retention
    def _expired(self, row: sqlite3.Row) -> bool:
        return row["finished_at"] is not None and time.time() - row["finished_at"] > self.ttl_s

    def prune(self) -> int:
        """Forget finished jobs past their TTL or beyond the count/bytes bounds (oldest first). Never raises: a
        database that cannot be written now is pruned on a later call."""
        def forget(db: sqlite3.Connection) -> list:
            rows = db.execute("SELECT id, finished_at, image, image_bytes FROM jobs "
                              "WHERE finished_at IS NOT NULL ORDER BY finished_at DESC, seq DESC").fetchall()
            doomed = retention.to_remove(rows, now=time.time(), ttl_s=self.ttl_s, max_kept=self.max_kept,
                                         max_bytes=self.max_bytes)
            if doomed:
                db.executemany("DELETE FROM jobs WHERE id=?", [(r["id"],) for r in doomed])
            return doomed

        try:
            doomed = self._call(forget)
        except StoreUnavailable:
            return 0
        for r in doomed:  # after the commit: a crash here leaves an orphan file, swept at the next start
            if r["image"]:
                (self.images / r["image"]).unlink(missing_ok=True)
        if doomed:
            logger.debug("job store: forgot %d finished job(s)", len(doomed))
        return len(doomed)

    def _sweep_orphans(self) -> None:
        """Files no row names (a crash between writing an image and recording it, or half-written temps), once
        they are old enough that no process sharing the folder can still be about to record them."""
        named = {r[0] for r in self._call(lambda db: db.execute("SELECT image FROM jobs WHERE image IS NOT NULL"
                                                                 ).fetchall())}
        cutoff = time.time() - ORPHAN_AGE_S
        for path in self.images.iterdir():
            try:
                if path.name not in named and path.stat().st_mtime < cutoff:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
