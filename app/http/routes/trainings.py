"""``/api/trainings``: train a LoRA from uploaded photos, follow it live, cancel it, use it.

``POST /api/trainings`` (multipart: ``photos`` = image files with optional same-name ``.txt`` captions, or
one ``.zip``; the fields of ``training/options.py``: ``name``, ``trigger``, optional ``task``, ``steps``...)
checks every field with the rules ``flux-service train`` uses, reserves the name, and checks the photos (422
naming every bad file, 413 past the limits), all before it answers 202 with the run. Runs go one at a time in their own process (``flux-service train``);
they survive a restart of the service and resume from their last checkpoint.

GPU sharing (one GPU): generation is never paused. On CUDA a training is admitted only when at least
``FLUX_TRAINING_MIN_FREE_GPU_GIB`` (30) GiB are free next to the serving model, plus the fused backup the
serving engine will add for the LoRA when the run registers a task, else 503 with Retry-After;
while it runs, images keep being generated, more slowly. On the CPU both simply share the cores.

A registered ``task`` is written to the task table when the run succeeds and is served at once (the
engine loads its adapter between two generations); ``task_served`` in the run says whether that worked.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.errors import ErrorEnvelope, NotReady
from app.http.event_schema import TRAINING_EVENTS, event_stream_response
from app.http.openapi import error_responses
from app.http.training_feed import KEEP_ALIVE, TrainingFeeds
from app.http.training_form import read_training_form

router = APIRouter()
_ERR = {"model": ErrorEnvelope}

#: the multipart body as the OpenAPI document shows it (the route reads it itself: app/http/training_form.py)
_FORM = {"type": "object", "required": ["photos", "name", "trigger"], "properties": {
    "photos": {"type": "array", "items": {"type": "string", "format": "binary"},
               "description": "image files (.jpg .jpeg .png .webp .bmp) with optional same-name .txt captions, or "
                              "one .zip; at most FLUX_TRAINING_MAX_FILES files"},
    "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
             "description": "LoRA name: models/lora/NAME"},
    "trigger": {"type": "string", "minLength": 1, "maxLength": 64,
                "description": "trigger word put first in every caption (no comma, quote, backslash; not '-...')"},
    "task": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$",
             "description": "register the LoRA as this task when done"},
    "strength": {"type": "number", "minimum": 0, "maximum": 2, "description": "the task's default strength (1.0)"},
    "steps": {"type": "integer", "minimum": 1, "maximum": 100000},
    "rank": {"type": "integer", "minimum": 1, "maximum": 256},
    "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 1024, "description": "default: rank"},
    "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.01},
    "resolution": {"type": "string", "description": "comma-separated multiples of 16 in 32..2048, e.g. 512,768,1024"},
    "seed": {"type": "integer", "minimum": 0},
    "caption_dropout": {"type": "number", "minimum": 0, "exclusiveMaximum": 1},
    "checkpoint_every": {"type": "integer", "minimum": 1},
    "overwrite": {"type": "boolean", "description": "replace a LoRA of that name (its folder, or one the task "
                                                    "table registers: its tasks serve the new file after a restart)"},
    "overwrite_task": {"type": "boolean", "description": "replace an existing task of that name"},
    "skip_bad": {"type": "boolean", "description": "train on the usable photos, list the bad ones in the run"},
}}


def runs_of(request: Request):
    runs = getattr(request.app.state, "trainings", None)
    if runs is None:
        raise NotReady("the service is starting; retry when GET /ready answers 200")
    return runs


@router.post("/api/trainings", status_code=202, summary="Train a LoRA from photos",
             openapi_extra={"requestBody": {"required": True,
                                            "content": {"multipart/form-data": {"schema": _FORM}}}},
             responses={202: {"description": "accepted and queued; follow /api/trainings/{id}/events"},
                        409: {"description": "the name is in use: a LoRA folder, a LoRA the task table registers "
                                             "(the message names its tasks), a task, or a run training it", **_ERR},
                        413: {"description": "upload over FLUX_MAX_TRAINING_UPLOAD_BYTES, more files than "
                                             "FLUX_TRAINING_MAX_FILES, or a zip unpacking past "
                                             "FLUX_TRAINING_MAX_UNPACKED_BYTES", **_ERR},
                        422: {"description": "a bad field (`param` names it), or photos that cannot be used (each "
                                             "named: unreadable, too small or too large, duplicate...)", **_ERR},
                        503: {"description": "not ready yet, or not enough free GPU memory to train next to the "
                                             "serving model", **_ERR}})
async def create_training(request: Request) -> JSONResponse:
    runs = runs_of(request)
    fields, files, form = await read_training_form(request, runs.settings.training_max_files)
    try:
        run = await asyncio.to_thread(runs.submit, files, fields)
    finally:
        await form.close()
    return JSONResponse(run, status_code=202, headers={"Location": f"/api/trainings/{run['id']}"})


@router.get("/api/trainings", summary="Every training kept on disk, oldest first")
async def list_trainings(request: Request) -> dict:
    runs = runs_of(request)
    return {"trainings": await asyncio.to_thread(lambda: [runs.get(r["id"]) for r in runs.list()])}


@router.get("/api/trainings/{run_id}", summary="A training's state (step, loss curve, samples)",
            responses={404: {"description": "unknown training", **_ERR}})
async def get_training(run_id: str, request: Request) -> dict:
    return runs_of(request).get(run_id)


@router.delete("/api/trainings/{run_id}", summary="Cancel a training",
               responses={404: {"description": "unknown training", **_ERR}})
async def cancel_training(run_id: str, request: Request) -> dict:
    """Queued: dropped. Running: stops at the next step after writing a checkpoint. Finished: unchanged."""
    return await asyncio.to_thread(runs_of(request).cancel, run_id)


@router.get("/api/trainings/{run_id}/files/{path:path}", summary="A sample image or the training report",
            response_class=FileResponse, responses={404: {"description": "no such file", **_ERR}})
async def training_file(run_id: str, path: str, request: Request) -> FileResponse:
    return FileResponse(runs_of(request).file(run_id, path), headers={"Cache-Control": "no-cache"})


def _sse(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False, allow_nan=False)}\n\n".encode()


@router.get("/api/trainings/{run_id}/events", summary="Follow a training as server-sent events",
            response_class=StreamingResponse,
            responses={200: event_stream_response("`state` (the run), the trainer's events, then one of `succeeded`, "
                                                  "`failed`, `cancelled` (the run); the schema is one event.",
                                                  TRAINING_EVENTS),
                       404: {"description": "unknown training", **_ERR}})
async def training_events(run_id: str, request: Request) -> StreamingResponse:
    """Events: ``state`` (the run, first), then as the trainer writes them ``step`` {step, total, loss, eta_s},
    ``sample`` {step, url}, ``checkpoint``, ``resumed``, ``phase``, and finally one of ``succeeded`` /
    ``failed`` / ``cancelled`` (data: the run). A reader connecting late gets every event from the start.
    One reader per run serves every subscriber (``app/http/training_feed.py``)."""
    runs = runs_of(request)
    first = runs.get(run_id)  # 404 before the stream starts
    feeds: TrainingFeeds = request.app.state.training_feeds

    async def stream():
        yield _sse("state", first)
        async for name, data in feeds.follow(run_id):
            yield b": keep-alive\n\n" if (name, data) == KEEP_ALIVE else _sse(name, data)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def install_trainings(app: FastAPI, settings, guarded, responses: dict | None = None) -> None:
    """Add the routes and start/stop the training supervisor around the app's own lifespan (after the
    engine is loaded: the demo preset and the GPU policy depend on it)."""
    # every route answers 503 `not_ready` while the service starts (runs_of): documented on each
    app.include_router(router, dependencies=guarded, tags=["trainings"],
                       responses={**error_responses(503), **(responses or {})})
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a):
        async with inner(a) as state:
            from training.runs import TrainingRuns, served_lora_backup_bytes

            engine = a.state.engine

            def serve_task(name: str) -> None:  # the task written by the trainer, served without a restart
                from pipelines.tasks import load_task_table

                table = load_task_table(engine.settings.resolved_tasks_file())
                engine.add_task(table.get(name), table.loras)

            runs = TrainingRuns(settings, demo=bool(getattr(engine, "is_demo", False)),
                                device=str(getattr(engine, "device", "cpu")), on_task=serve_task,
                                backup_need=lambda: served_lora_backup_bytes(engine))
            a.state.trainings = await asyncio.to_thread(runs.start)
            a.state.training_feeds = TrainingFeeds(runs)
            try:
                yield state
            finally:
                await asyncio.to_thread(runs.stop, settings.shutdown_grace_s)
                a.state.trainings = None

    app.router.lifespan_context = lifespan
