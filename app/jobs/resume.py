"""Start-up (and later, when the folder is shared): the jobs a gone process accepted but did not finish go back
into the queue, in submission order.

A job that was running when the service stopped (or crashed) is simply run again from the first step: its seed
was fixed at submission, so the image is the same one the client would have got. A job whose runs were
interrupted ``MAX_ATTEMPTS`` times fails instead (it may be what crashes the service), with a message saying so.
Each resumed job gets a fresh deadline (``request_timeout_s`` from now): the downtime is not its fault.
Only jobs whose owner is gone (or let them go at its shutdown) are taken (``JobStore.claim_orphans``): a job
another live process holds stays with it.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import fields

from app.jobs.job import Job
from pipelines.errors import FluxServiceError
from pipelines.types import GenerationRequest

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3


class Interrupted(FluxServiceError):
    """A job that was running every time the service went down."""

    type = "interrupted"


def job_from_row(row, request_timeout_s: float, cls=Job) -> Job:
    """An unfinished job's row as a queued ``cls`` (``Job``, or ``RemoteJob`` for one another process holds)."""
    known = {f.name for f in fields(GenerationRequest)}
    data = json.loads(row["request"])
    if data.get("loras") is not None:  # JSON gave lists back; the request holds (name, scale) tuples
        data["loras"] = tuple((str(name), float(scale)) for name, scale in data["loras"])
    return cls(request=GenerationRequest(**{k: v for k, v in data.items() if k in known}), kind="job",
               deadline=time.monotonic() + request_timeout_s, total=row["total"], adapter=row["adapter"],
               lora_scale=row["lora_scale"], id=row["id"], created_at=row["created_at"], attempts=row["attempts"])


def pending_jobs(store, request_timeout_s: float) -> list[Job]:
    """Claim the unfinished jobs of gone owners in ``store`` and rebuild them as queued ``Job``s (registered
    with the store as this process's)."""
    jobs, interrupted, failed = [], 0, 0
    for row in store.claim_orphans():
        job = job_from_row(row, request_timeout_s)
        store.adopt(job)
        if row["status"] == "running":
            interrupted += 1
            store.interrupted(job)
            if job.attempts >= MAX_ATTEMPTS:
                failed += 1
                job.error = Interrupted(f"the service went down {job.attempts} times while this job ran; it is not "
                                        "run again (it may be what stops the service)")
                job.status, job.finished_at = "failed", time.time()
                store.finished(job)
                continue
        jobs.append(job)
    if jobs or failed:
        logger.info("job store: resuming %d job(s) accepted before a restart or by a process that is gone (%d were "
                    "running)%s", len(jobs),
                    interrupted - failed, f"; {failed} failed after {MAX_ATTEMPTS} interrupted runs" if failed else "")
    return jobs
