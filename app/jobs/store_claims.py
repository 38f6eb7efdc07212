"""Several processes on one data folder: who owns each unfinished job (``StoreClaims``, mixed into ``JobStore``).

Why: a Ray rolling update starts the next ingress while the previous one drains, and several ingress replicas
share one folder. Each unfinished job row names its owner (``app/jobs/owners.py``: a store whose lock file is
held is alive); only the owner runs a job, a process takes over only jobs whose owner is gone or let them go,
each with one conditional UPDATE (so exactly one process gets it), and a DELETE for a job another live
process runs is passed on through its row.
"""

from __future__ import annotations

import sqlite3

from app.errors import StorageError
from app.jobs.owners import legacy_service_running, owner_alive
from app.jobs.store_repair import StoreUnavailable


class StoreClaims:
    """Ownership of unfinished jobs among the processes sharing a data folder."""

    def owner_alive(self, owner: str | None) -> bool:
        if owner is None:
            return False
        return owner == self.owner or owner_alive(self.data_dir, owner)

    def claim_orphans(self) -> list[sqlite3.Row]:
        """Take over the unfinished jobs whose owner is gone or let them go, in submission order; each row is
        claimed with one conditional UPDATE, so of several processes looking at once exactly one gets it. None
        while the database cannot be used (the next pass tries again)."""
        try:
            rows = self._call(lambda db: db.execute(
                "SELECT * FROM jobs WHERE record IS NULL AND (owner IS NULL OR owner != ?) ORDER BY seq",
                (self.owner,)).fetchall())
        except StoreUnavailable:
            return []
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
        try:
            return self._call(lambda db: db.execute(
                "UPDATE jobs SET owner=? WHERE id=? AND owner IS ? AND record IS NULL",
                (self.owner, job_id, previous_owner)).rowcount) == 1
        except StoreUnavailable:
            return False

    def request_cancel(self, job_id: str, message: str) -> None:
        """A DELETE for a job another live process runs: its owner reads this (``cancel_requests``) and stops it."""
        try:
            self._call(lambda db: db.execute("UPDATE jobs SET cancel=? WHERE id=? AND record IS NULL",
                                             (message, job_id)))
        except StoreUnavailable as exc:
            raise StorageError(f"job {job_id!r} runs in another process and the cancellation could not be passed "
                               f"on now ({exc.reason}); retry later", param="id") from None

    def cancel_requests(self) -> list[tuple[str, str]]:
        """(job id, message) of this store's unfinished jobs that a DELETE in another process asked to stop."""
        try:
            return self._call(lambda db: [(r["id"], r["cancel"]) for r in db.execute(
                "SELECT id, cancel FROM jobs WHERE owner=? AND cancel IS NOT NULL AND record IS NULL",
                (self.owner,))])
        except StoreUnavailable:
            return []
