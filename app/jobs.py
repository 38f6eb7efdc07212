"""The job registry: where ``/api/jobs/{id}`` finds a job, and how long a finished one is remembered.

Why retention by time *and* count: a finished job holds its PNG in memory; a page that queues hundreds of
images must not grow the process without bound, and a job nobody asks about should not live forever.
Jobs that are queued or running are never forgotten (the queue bound already limits them). A forgotten
job answers 404 with a message that says it may have expired, so a client can tell "typo" from "too late".
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from .errors import NotFound
from .job import Job


class JobStore:
    def __init__(self, ttl_s: float, max_kept: int) -> None:
        self.ttl_s = ttl_s
        self.max_kept = max_kept
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, job: Job) -> None:
        with self._lock:
            self._prune()
            self._jobs[job.id] = job

    def discard(self, job: Job) -> None:
        with self._lock:
            self._jobs.pop(job.id, None)

    def get(self, job_id: str) -> Job:
        with self._lock:
            self._prune()
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}: it never existed or it finished and was forgotten (finished jobs "
                           f"are kept {self.ttl_s:g}s and at most {self.max_kept}), so it may have expired",
                           param="id")
        return job

    def __len__(self) -> int:
        with self._lock:
            self._prune()
            return len(self._jobs)

    def _prune(self) -> None:
        now = time.time()
        finished = sorted((j for j in self._jobs.values() if j.done and j.finished_at is not None),
                          key=lambda j: j.finished_at)
        expired = [j for j in finished if now - j.finished_at > self.ttl_s]
        kept = [j for j in finished if now - j.finished_at <= self.ttl_s]
        expired += kept[:max(0, len(kept) - self.max_kept)]
        for job in expired:
            self._jobs.pop(job.id, None)
