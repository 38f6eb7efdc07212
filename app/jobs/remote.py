"""A job that another process holds, seen through its row: ``GET /api/jobs/{id}``, its events and DELETE.

Why: with several processes on one data folder (Ray ingress replicas, the two ingresses of a rolling update),
the request that asks about a job often reaches a process that did not accept it. The owner writes the job's
state, progress and newest preview into its row (``JobStore.progressed``, at most every 0.5 s); this view reads
the row again while someone waits on it and turns each change into the same events the owner's own stream
sends (``running``, ``progress``, ``preview``, ``queued`` when it starts over, then the terminal one), so a
client cannot tell which process it reached, except that events come in 0.5 s steps and the queue position is
unknown (``null``). DELETE goes through the row too (``Worker.cancel`` -> ``app/jobs/sharing.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

from app.jobs.job import TERMINAL, Job
from app.jobs.resume import job_from_row

#: how often a waiting reader reads the row again
POLL_S = 0.5


@dataclass(eq=False)
class RemoteJob(Job):
    #: the store (process) that holds it; None: let go at a shutdown and not taken over yet
    owner: str | None = None

    @classmethod
    def from_row(cls, row, store) -> "RemoteJob":
        job = job_from_row(row, request_timeout_s=0.0, cls=cls)
        job._store, job._record = store, None
        job._apply(row, publish=False)
        return job

    def _apply(self, row, publish: bool = True) -> None:
        """Take the row's state; with ``publish``, tell the event readers what changed."""
        if row is None:
            return  # forgotten by retention between two reads: nothing more will change
        self.owner = row["owner"]
        if row["record"] is not None:
            was_step = self.step
            self._record = json.loads(row["record"])
            self.image_sha256 = row["image_sha256"]  # checked when its image is served
            self.status = self._record["status"]
            self.step = self._record.get("step", self.step)
            if publish:
                if self.status == "succeeded" and was_step < self.total:
                    # its last steps fell between two reads of the row: the bar ends full, as the owner's does
                    self.publish("progress", {"step": self.total, "total": self.total})
                self.publish(self.status, dict(self._record))
            return
        status, step = row["status"], row["step"]
        preview = json.loads(row["preview"]) if row["preview"] else None
        was_status, was_step = self.status, self.step
        was_preview = self.preview["step"] if self.preview is not None else None
        self.status, self.step, self.replica = status, step, row["replica"]
        self.started_at = row["started_at"]
        self.preview = preview
        if not publish:
            return
        if status != was_status or step < was_step:
            if status == "running":
                self.publish("running", {"step": 0, "total": self.total, "replica": self.replica})
            else:  # back in a queue: it starts over (its process went, another one took it)
                self.publish("queued", {"position": None})
        if status == "running" and step > 0 and (step != was_step or status != was_status):
            self.publish("progress", {"step": step, "total": self.total})
        if preview is not None and preview["step"] != was_preview:
            self.publish("preview", {"step": preview["step"]})

    async def refresh(self) -> None:
        row = await asyncio.to_thread(self._store.row, self.id)
        self._apply(row)

    # ------------------------------------------------------------------ what the routes call
    def to_dict(self) -> dict:
        return dict(self._record) if self._record is not None else super().to_dict()

    async def wait_for_events(self, index: int, timeout: float) -> None:
        end = time.monotonic() + timeout
        while len(self.events_since(index)) == 0 and time.monotonic() < end and self.status not in TERMINAL:
            await asyncio.sleep(min(POLL_S, max(0.0, end - time.monotonic())))
            await self.refresh()

    async def wait_done(self, timeout: float | None) -> bool:
        end = None if timeout is None else time.monotonic() + timeout
        while not self.done:
            if end is not None and time.monotonic() >= end:
                return False
            await asyncio.sleep(POLL_S)
            await self.refresh()
        return True
