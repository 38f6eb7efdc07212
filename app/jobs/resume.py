"""Start-up: the jobs a previous run accepted but did not finish go back into the queue, in submission order.

A job that was running when the service stopped (or crashed) is simply run again from the first step: its seed
was fixed at submission, so the image is the same one the client would have got. A job whose runs were
interrupted ``MAX_ATTEMPTS`` times fails instead (it may be what crashes the service), with a message saying so.
Each resumed job gets a fresh deadline (``request_timeout_s`` from now): the downtime is not its fault.
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


def pending_jobs(store, request_timeout_s: float) -> list[Job]:
    """Rebuild the unfinished jobs of ``store`` as queued ``Job``s (registered with the store again)."""
    known = {f.name for f in fields(GenerationRequest)}
    jobs, interrupted, failed = [], 0, 0
    for row in store.pending_rows():
        data = json.loads(row["request"])
        if data.get("loras") is not None:  # JSON gave lists back; the request holds (name, scale) tuples
            data["loras"] = tuple((str(name), float(scale)) for name, scale in data["loras"])
        job = Job(request=GenerationRequest(**{k: v for k, v in data.items() if k in known}), kind="job",
                  deadline=time.monotonic() + request_timeout_s, total=row["total"], adapter=row["adapter"],
                  lora_scale=row["lora_scale"], id=row["id"], created_at=row["created_at"],
                  attempts=row["attempts"])
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
        logger.info("job store: resuming %d job(s) accepted before the restart (%d were running)%s", len(jobs),
                    interrupted - failed, f"; {failed} failed after {MAX_ATTEMPTS} interrupted runs" if failed else "")
    return jobs
