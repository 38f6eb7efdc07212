"""From an HTTP request to a queued ``Job``: parse, validate against the model, fix the seed, enqueue.

Shared by ``/api/generate-image`` and ``/api/jobs`` so both give the same 422s for the same input, and a bad
request is refused before it takes a place in the queue (let alone the GPU). The seed is drawn here, at
submission, so a job's seed is known while it waits and the same request can be replayed exactly.

Planning runs off the event loop, on one thread of its own: it includes the prompt stage, and a translation
model (``models/translator``) spends hundreds of milliseconds on a new prompt on a CPU (the dictionary loads
on first use), which on the loop stalled every other request, ``/ready`` and event streams included. One
thread, not a pool: requests are planned one at a time, as they were on the loop (the engine's worker plans
too, so planning meets at most one other thread, as before).
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import Request
from pydantic import ValidationError

from app.http.deps import engine_of, worker_of
from app.http.request_body import read_params
from app.jobs.job import Job
from pipelines.errors import FluxServiceError

_planner: ThreadPoolExecutor | None = None
_planner_lock = threading.Lock()


def _planning_thread() -> ThreadPoolExecutor:
    global _planner
    with _planner_lock:
        if _planner is None:
            _planner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="flux-plan")
        return _planner


async def submit(request: Request, kind: str) -> Job:
    metrics = request.app.state.metrics
    try:
        engine = engine_of(request)
        worker = worker_of(request)
        params = await read_params(request, request.app.state.params_model)
        req = params.to_request(engine.tasks.names(), [t.name for t in engine.task_infos() if t.adapter_name])
        plan = await asyncio.get_running_loop().run_in_executor(_planning_thread(), engine.plan, req)
        req = dataclasses.replace(req, seed=plan.seed, width=plan.width, height=plan.height,
                                  num_inference_steps=plan.num_inference_steps)
        job = Job(request=req, kind=kind, total=plan.num_inference_steps,
                  deadline=time.monotonic() + request.app.state.settings.request_timeout_s,
                  adapter=plan.adapter.name if plan.adapter else None, lora_scale=plan.lora_scale)
        journal = getattr(worker, "journal", None) if kind == "job" else None
        if journal is not None:
            # on disk before the 202, written from a thread: the database may wait for a lock (app/jobs/store.py),
            # and the event loop must keep answering meanwhile
            await asyncio.to_thread(journal.accepted, job)
        try:
            worker.submit(job)  # the journal already has it (recording it again is a no-op)
        except FluxServiceError:
            if journal is not None:  # refused after all (queue full, shutting down): not a job to run later
                await asyncio.to_thread(journal.discard, job)
            raise
    except FluxServiceError as exc:
        metrics.requests.labels(kind, exc.type).inc()
        raise
    except ValidationError:
        metrics.requests.labels(kind, "invalid_request").inc()
        raise
    return job
