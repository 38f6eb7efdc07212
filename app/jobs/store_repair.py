"""The job store's database access with repair, its fault state and its writer thread (``StoreRepair``).

Why apart from the store's journal (``store.py``): what the store promises (an accepted job is never
forgotten) is simple; keeping it when the database is locked by another process, the disk is full, or the
file is deleted, replaced or damaged under the service is not. Every database call goes through ``_call``,
which checks the file first, repairs what can be repaired (``app/jobs/database.py`` tells the faults apart)
and otherwise records the fault; failed writes stay pending and the writer thread retries them every
``RETRY_S``; ``fault()`` says why the store cannot keep its promise now (``/ready`` answers 503 with it).
``JobStore`` inherits this; the state it uses (``_db``, ``_db_lock``, ``_mem``, ``_live``, ``_dirty``,
``_fault``...) is created in ``JobStore.__init__``.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3

from app.jobs.database import UPSERT, classify, describe

logger = logging.getLogger("app.jobs.store")  # the store's log lines, under one name

RETRY_S = 0.5  # the writer thread's period: retry failed writes, notice a vanished database file
MIN_FREE_BYTES = 16 * 1024 * 1024  # a full disk counts as "space returned" past this much free space


class StoreUnavailable(Exception):
    """A database operation failed and could not be repaired now; ``reason`` is client-safe."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class StoreRepair:
    """Database access with repair, the fault state, and the writer thread's retries (mixed into ``JobStore``)."""

    def _call(self, op):
        """Run ``op(connection)``; repair what can be repaired (a vanished or damaged file) and run it again;
        otherwise record the fault and raise ``StoreUnavailable``."""
        with self._db_lock:
            if self._db.conn is None:
                raise StoreUnavailable("the job store is closed")
            self._check_files()
            try:
                return op(self._db.conn)
            except sqlite3.Error as exc:
                kind = classify(exc)
                if kind == "damaged" and self._repair_damaged(exc):
                    try:
                        return op(self._db.conn)
                    except sqlite3.Error as again:
                        exc, kind = again, classify(again)
                reason = describe(kind, exc)
                self._set_fault(reason)
                raise StoreUnavailable(reason) from exc

    def _check_files(self) -> None:
        """Before each use: the database file is still the one at the path and still SQLite's; else it is
        recreated (deleted), used (replaced by another process's sound file) or replaced (damaged) now: the open
        connection would go on working while what it writes is lost at the next start."""
        vanished = self._db.vanished()
        overwritten = None if vanished else self._db.overwritten()
        if vanished is None and overwritten is None:
            return
        try:
            if vanished == "deleted":
                self._db.recreate("deleted")
            elif vanished == "replaced" and self._db.path_is_sound():
                self._db.switch("was replaced by another file (another process sharing the folder replaced a "
                                "damaged or deleted one)")
            else:
                self._db.replace("damaged", overwritten or "was replaced by a file that is not a job database")
        except (OSError, sqlite3.Error) as exc:
            reason = ("the job database was deleted and could not be recreated in the data folder"
                      if vanished == "deleted" else
                      "the job database is damaged and a new one could not be started in the data folder")
            if self._set_fault(reason):  # logged once, not at every retry
                logger.error("job store: the job database %s and could not be replaced: %s",
                             vanished or overwritten, exc)
            raise StoreUnavailable(reason) from exc
        self._write_all_live()

    def _repair_damaged(self, exc: sqlite3.Error) -> bool:
        """True when the database works again (a fresh connection, or a new file with every job in memory)."""
        try:
            if not self._db.confirm_damaged():
                self._db.reopen()
                logger.warning("job store: the connection reported %s but the file reads fine; reconnected", exc)
                return True
            self._db.replace("damaged", f"is damaged ({exc})")
        except (OSError, sqlite3.Error) as again:
            logger.error("job store: the job database is damaged (%s) and could not be replaced: %s", exc, again)
            return False
        self._write_all_live()
        return True

    def _write_all_live(self) -> None:
        """After the database was replaced: every job in memory gets its row again (in submission order); if that
        fails too, they all wait for the writer thread."""
        with self._mem:
            jobs = sorted(self._live.values(), key=lambda j: j.created_at)
        try:
            self._db.conn.executemany(UPSERT, [self._row(j) for j in jobs])
        except sqlite3.Error as exc:
            logger.error("job store: could not write the %d job(s) in memory into the new database (%s); retrying",
                         len(jobs), exc)
            with self._mem:
                for job in jobs:
                    self._changes += 1
                    self._dirty[job.id] = self._changes
            return
        with self._mem:
            self._dirty.clear()
            for job in jobs:
                if job.done or job.id in self._released:
                    self._forget(job.id)
        if jobs:
            logger.info("job store: wrote the %d job(s) held in memory into the new database", len(jobs))

    def _set_fault(self, reason: str) -> bool:
        """Record why the store fails; True (and one log line) when it was working until now."""
        with self._mem:
            first, self._fault = self._fault is None, reason
        if first:
            logger.error("job store: %s; jobs stay in memory and their updates are retried every %gs", reason,
                         RETRY_S)
        self._wake.set()
        return first

    def _clear_fault(self) -> None:
        with self._mem:
            was, self._fault = self._fault, None
        if was is not None:
            logger.warning("job store: writable again (was: %s)", was)

    def fault(self) -> str | None:
        """Why the store cannot keep its promise now (``/ready`` answers 503 with it), or None."""
        with self._mem:
            if self._fault is not None:
                return self._fault + (f"; {len(self._dirty)} job update(s) wait to be written" if self._dirty else "")
        if self._writer is not None and not self._writer.is_alive() and not self._stop.is_set():
            return "the job store's writer thread stopped"
        return None

    def _flush(self) -> bool:
        """Write every pending job state in order; True when none is left. Finished jobs leave memory once
        written; retention runs after."""
        with self._mem:
            pending = [(self._live[i], n) for i, n in self._dirty.items() if i in self._live]
        if not pending:
            return True
        try:
            for job, change in pending:
                self._call(lambda db, job=job: db.execute(UPSERT, self._row(job)))
                with self._mem:
                    if self._dirty.get(job.id) == change:  # not changed again meanwhile
                        del self._dirty[job.id]
                        if job.done or job.id in self._released:
                            self._forget(job.id)
        except StoreUnavailable:
            return False
        self._clear_fault()
        self.prune()
        return True

    def _write_loop(self) -> None:
        """Retry pending writes, notice a vanished database file, clear a fault once the store works again."""
        while not self._stop.is_set():
            self._wake.wait(RETRY_S)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._mem:
                    dirty, fault = bool(self._dirty), self._fault
                if dirty:
                    self._flush()
                elif fault is not None:
                    self._probe()
                else:
                    self._call(lambda db: None)  # checks that the file is still there (and recreates it)
            except StoreUnavailable:
                pass
            except Exception:  # noqa: BLE001 - a bug here must not stop the retries
                logger.exception("job store: writer thread error")

    def _probe(self) -> None:
        """Nothing pending but a fault recorded: is the database writable (and the disk not full) again?"""
        def can_write(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")  # takes the write lock, as a write would
            db.execute("ROLLBACK")

        self._call(can_write)
        if shutil.disk_usage(self.data_dir).free < MIN_FREE_BYTES:
            return
        self._clear_fault()
