"""This process's part in a job store that several processes share (see ``app/jobs/owners.py``).

Two duties, on the event loop, every ``TICK_S`` while the service takes work:
- DELETEs that reached another process for a job this one runs (the ``cancel`` column): stop it here.
- Every ``ADOPT_EVERY`` ticks: take over the jobs whose process is gone or let them go (a rolling update's
  previous ingress hands its queued jobs over as it drains; a crashed process's jobs are found by its lock),
  and queue them like the jobs a restart resumes.
And one for the routes: ``cancel_elsewhere``, a DELETE for a job this process does not hold.
"""

from __future__ import annotations

import asyncio
import logging
import time

from app.jobs.remote import RemoteJob
from app.jobs.resume import job_from_row, pending_jobs
from pipelines.errors import Cancelled, FluxServiceError

logger = logging.getLogger(__name__)

TICK_S = 0.5
ADOPT_EVERY = 4  # ticks: jobs of a gone process are taken over within about 2 s


class StoreSync:
    def __init__(self, store, worker, request_timeout_s: float) -> None:
        self.store, self.worker, self.request_timeout_s = store, worker, request_timeout_s
        self._task: asyncio.Task | None = None
        self._asked: set[str] = set()  # cancellations already passed to the worker

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        tick = 0
        while True:
            await asyncio.sleep(TICK_S)
            tick += 1
            if not self.worker.accepting:  # draining: take nothing more; the next owner will
                continue
            try:
                await self._cancel_requested()
                if tick % ADOPT_EVERY == 0:
                    jobs = await asyncio.to_thread(pending_jobs, self.store, self.request_timeout_s)
                    if jobs and self.worker.accepting:
                        self.worker.resume(jobs)
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed pass is retried at the next tick, never the end of the loop
                logger.exception("job store: sharing pass failed")

    async def _cancel_requested(self) -> None:
        for job_id, message in await asyncio.to_thread(self.store.cancel_requests):
            if job_id in self._asked:
                continue
            job = self.store.get(job_id)
            if isinstance(job, RemoteJob) or job.done:
                continue
            self._asked.add(job_id)
            self.worker.cancel(job, Cancelled(message))
        if len(self._asked) > 1000:
            self._asked.clear()


def cancel_elsewhere(store, job: RemoteJob, reason: FluxServiceError) -> None:
    """DELETE of a job this process does not hold. Its owner alive: ask it (through the row). Nobody holds it
    (let go at a shutdown, or its process is gone): take it and record it cancelled here, at once."""
    if job.done:
        return
    if not store.owner_alive(job.owner) and store.claim(job.id, job.owner):
        row = store.row(job.id)
        mine = job_from_row(row, request_timeout_s=0.0)
        mine.status, mine.error, mine.finished_at = "cancelled", reason, time.time()
        mine.step, mine.replica = row["step"], row["replica"]
        store.adopt(mine)
        store.finished(mine)
        return
    store.request_cancel(job.id, reason.message if isinstance(reason, FluxServiceError) else str(reason))
