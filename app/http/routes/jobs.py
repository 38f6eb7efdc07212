"""``/api/jobs``: the same generation as ``/api/generate-image`` without holding a request open.

A job is queued in the same FIFO as direct requests (one queue, so neither kind can starve the other),
can be polled, followed live as server-sent events, fetched as PNG when done, and cancelled. Jobs are durable
(``app/jobs/``): accepted jobs survive a restart, finished ones (their PNG a file in the data folder) are kept
per ``job_ttl_s`` / ``max_jobs_kept`` / ``max_jobs_bytes``.

Events (``GET /api/jobs/{id}/events``, ``text/event-stream``): ``queued`` {position} (1 = next),
``running`` {step, total}, ``progress`` {step, total}, then exactly one of ``succeeded`` / ``failed`` /
``cancelled`` (data: the job) and the stream ends. A reader that connects late first gets the current state.
A job that starts over (under Ray: retried after its replica died) sends ``queued`` again, then a new
``running`` and ``progress`` from step 1.
When the service shuts down before the job ended, the stream ends with ``shutdown`` instead (data: the job,
``status`` queued, and a ``message``): the job is kept and runs after the next start; reconnect then.
"""

from __future__ import annotations

import asyncio
import json

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from app.errors import Conflict
from app.http.deps import jobs_of, worker_of
from app.http.event_schema import JOB_EVENTS, event_stream_response
from app.http.job_schema import Job as JobSchema
from app.http.openapi import error_responses, png_response, request_body
from app.http.routes.generate import HEADER_DOCS, RESULT_HEADERS, result_headers
from app.http.submission import submit
from app.jobs import StoredJob
from app.jobs.job import TERMINAL, Job
from app.jobs.remote import RemoteJob
from pipelines.errors import Cancelled

router = APIRouter()

_NOT_FOUND = error_responses(404)
#: a finished job is read from the job database: 503 `storage_unavailable` while it cannot be read
_STORAGE = error_responses(503)
_JOB = {"model": JobSchema, "description": "The job."}
KEEPALIVE_S = 15.0
#: where a new job's id leads (OpenAPI links: generated clients and schemathesis' stateful tests follow them)
_JOB_LINKS = {name: {"operationId": op, "parameters": {"job_id": "$response.body#/id"}}
              for name, op in (("GetJob", "get_job"), ("JobEvents", "job_events"), ("JobImage", "get_job_image"),
                               ("CancelJob", "cancel_job"))}
PREVIEW_DOC = ("true: also send `preview` events {step, total, width, height, image} while the job runs: a small "
               "JPEG data URL (longest side <= 160 px) of the latents every few steps (app/jobs/previews.py); "
               "without it none is computed")


@router.post("/api/jobs", status_code=202, openapi_extra=request_body(), summary="Queue an image job",
             response_model=None,
             responses={202: {**_JOB, "description": "Queued; poll it or follow /api/jobs/{id}/events.",
                              "headers": {"Location": {"description": "The job's URL.", "required": True,
                                                       "schema": {"type": "string"}}},
                              "links": _JOB_LINKS},
                        **error_responses(413, 422, 500, 503)})
async def create_job(request: Request) -> JSONResponse:
    job = await submit(request, "job")  # the worker recorded it in the job store before queueing it
    return JSONResponse(job.to_dict(), status_code=202, headers={"Location": f"/api/jobs/{job.id}"})


async def find_job(request: Request, job_id: str) -> Job | StoredJob:
    """A job this process runs, from memory; any other (finished, or held by another process: ``RemoteJob``) from
    the database, read in a thread (the database may wait for another process's lock; the event loop must not)."""
    store = jobs_of(request)
    return store.live(job_id) or await asyncio.to_thread(store.get, job_id)


@router.get("/api/jobs/{job_id}", summary="A job's state", response_model=None,
            responses={200: _JOB, **_NOT_FOUND, **_STORAGE})
async def get_job(job_id: str, request: Request) -> dict:
    return (await find_job(request, job_id)).to_dict()


@router.get("/api/jobs/{job_id}/image", response_class=Response, summary="A finished job's PNG",
            responses={200: png_response("The image; the headers say what was used.", RESULT_HEADERS, HEADER_DOCS),
                       **error_responses(404, 409, 500), **_STORAGE})  # 500: image_corrupt
async def get_job_image(job_id: str, request: Request) -> Response:
    job = await find_job(request, job_id)
    if job.status != "succeeded":
        raise Conflict(f"job {job_id!r} is {job.status}; its image exists only once it has succeeded", param="id")
    # a file (finished jobs hold no image in memory), checked against the sha256 recorded when it was written
    png = await asyncio.to_thread(jobs_of(request).read_image, job)
    return Response(png, media_type="image/png", headers=result_headers(job))


@router.delete("/api/jobs/{job_id}", summary="Cancel a job", response_model=None,
               responses={200: {**_JOB, "description": "The job after the cancellation."},
                          **error_responses(404, 503)})
async def cancel_job(job_id: str, request: Request) -> dict:
    """Queued: removed from the queue. Running: stopped at the next denoising step. Finished: unchanged."""
    job = await find_job(request, job_id)
    reason = Cancelled("cancelled by the client (DELETE)")
    if isinstance(job, RemoteJob):  # held by another process: passed on through the database, from a thread
        await asyncio.to_thread(worker_of(request).cancel, job, reason)
    else:
        worker_of(request).cancel(job, reason)
    if not job.done:
        await job.wait_done(timeout=10.0)
    return job.to_dict()


#: how long an EventSource should wait before reconnecting after a ``shutdown`` event (a restart takes a while)
SHUTDOWN_RETRY_MS = 10_000


def _sse(name: str, data: dict) -> bytes:
    retry = f"retry: {SHUTDOWN_RETRY_MS}\n" if name == "shutdown" else ""
    return f"{retry}event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def _event_stream(job: Job | StoredJob, previews: bool = False):
    # a finished job read back from the store (StoredJob) makes no previews: its stream is its terminal event
    watching = previews and isinstance(job, Job)
    if watching:  # only the event loop touches the count; the worker thread just reads it
        job.preview_watchers += 1
    try:
        async for chunk in _events(job, watching):
            yield chunk
    finally:
        if watching:
            job.preview_watchers -= 1


async def _events(job: Job | StoredJob, previews: bool):
    state, index = job.snapshot()
    last_step, last_position, last_preview = -1, None, -1
    if state["status"] in TERMINAL:
        yield _sse(state["status"], state)
        return
    if job.suspended:  # the service is shutting down and will not run it before the restart
        yield _sse("shutdown", {**state, "message": job.suspended})
        return
    if state["status"] == "queued":
        last_position = state["position"]
        yield _sse("queued", {"position": last_position})
    else:
        last_step = state["step"]
        yield _sse("running", {"step": state["step"], "total": state["total"]})
        yield _sse("progress", {"step": state["step"], "total": state["total"]})
        shown = job.preview
        if previews and shown is not None:  # a late reader sees the current picture at once
            last_preview = shown["step"]
            yield _sse("preview", shown)
    while True:
        events = job.events_since(index)
        index += len(events)
        for name, data in events:
            if name == "preview":
                shown = job.preview  # the newest one; None once the job has finished
                if previews and shown is not None and shown["step"] > last_preview:
                    last_preview = shown["step"]
                    yield _sse("preview", shown)
                continue
            if name == "progress":
                if data["step"] <= last_step:
                    continue
                last_step = data["step"]
            elif name == "queued":
                if last_step >= 0:  # queued again after it ran: a retry (its Ray replica died) starts from step 1
                    last_step, last_preview = -1, -1
                elif data["position"] == last_position:
                    continue
                last_position = data["position"]
            elif name == "running" and last_step >= 0:
                continue
            yield _sse(name, data)
            if name in TERMINAL or name == "shutdown":
                return
        if not events:
            before = index
            await job.wait_for_events(index, timeout=KEEPALIVE_S)
            if not job.events_since(before):
                yield b": keep-alive\n\n"


@router.get("/api/jobs/{job_id}/events", summary="Follow a job as server-sent events",
            responses={200: event_stream_response(
                "`queued`, `running`, `progress` (and with `preview=true`, `preview`) events, then one of "
                "`succeeded`, `failed`, `cancelled` (data: the job), or `shutdown`; the schema is one event.",
                JOB_EVENTS),
                       **error_responses(404, 422), **_STORAGE},  # 422: `preview` that is not a boolean
            response_class=StreamingResponse)
async def job_events(job_id: str, request: Request,
                     preview: bool = Query(False, description=PREVIEW_DOC)) -> StreamingResponse:
    job = await find_job(request, job_id)
    return StreamingResponse(_event_stream(job, preview), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
