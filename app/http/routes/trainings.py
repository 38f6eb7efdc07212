"""``/api/trainings``: train a LoRA from uploaded photos, follow it live, cancel it, use it.

``POST /api/trainings`` (multipart: ``photos`` = image files with optional same-name ``.txt`` captions, or
one ``.zip``; fields ``name``, ``trigger``, optional ``task``, ``steps``, ``rank``, ``alpha``, ``lr``,
``resolution``, ``seed``, ``strength``, ``overwrite_task``) checks the photos at once (422 naming every bad
file) and answers 202 with the run. Runs go one at a time in their own process (``flux-service train``);
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

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.errors import Conflict, ErrorEnvelope, NotFound, NotReady

router = APIRouter()
_TERMINAL = ("succeeded", "failed", "cancelled")
_ERR = {"model": ErrorEnvelope}


class _HttpRuns:
    """The supervisor, with its "no such run" / "name taken" errors turned into 404 / 409."""

    def __init__(self, runs) -> None:
        self._runs = runs

    def __getattr__(self, name):
        target = getattr(self._runs, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            from training.errors import NameTaken
            from training.runs import RunNotFound

            try:
                return target(*args, **kwargs)
            except RunNotFound as exc:
                raise NotFound(exc.message, param=exc.param) from None
            except NameTaken as exc:
                raise Conflict(exc.message, param=exc.param) from None

        return call


def runs_of(request: Request):
    runs = getattr(request.app.state, "trainings", None)
    if runs is None:
        raise NotReady("the service is starting; retry when GET /ready answers 200")
    return _HttpRuns(runs)


@router.post("/api/trainings", status_code=202, summary="Train a LoRA from photos",
             responses={202: {"description": "accepted and queued; follow /api/trainings/{id}/events"},
                        409: {"description": "a LoRA or task with that name already exists", **_ERR},
                        413: {"description": "upload over FLUX_MAX_TRAINING_UPLOAD_BYTES", **_ERR},
                        422: {"description": "bad options, or photos that cannot be used (each named)", **_ERR},
                        503: {"description": "not enough free GPU memory to train next to the serving model",
                              **_ERR}})
async def create_training(
    request: Request,
    photos: list[UploadFile] = File(..., description="image files (+ same-name .txt captions) or one .zip"),
    name: str = Form(..., description="LoRA name: models/lora/NAME"),
    trigger: str = Form(..., description="trigger word put first in every caption"),
    task: str | None = Form(None, description="register the LoRA as this task when done"),
    steps: int | None = Form(None), rank: int | None = Form(None), alpha: float | None = Form(None),
    lr: float | None = Form(None), resolution: str | None = Form(None, description="e.g. 512,768,1024"),
    seed: int | None = Form(None), strength: float | None = Form(None, description="task default strength (1.0)"),
    overwrite_task: bool = Form(False),
) -> JSONResponse:
    runs = runs_of(request)
    files = [(f.filename or "", await f.read()) for f in photos]
    options = dict(name=name, trigger=trigger, task=task or None, steps=steps, rank=rank, alpha=alpha, lr=lr,
                   resolution=resolution, seed=seed, strength=strength, overwrite_task=overwrite_task)
    run = await asyncio.to_thread(runs.submit, files, options)
    return JSONResponse(run, status_code=202, headers={"Location": f"/api/trainings/{run['id']}"})


@router.get("/api/trainings", summary="Every training kept on disk, oldest first")
async def list_trainings(request: Request) -> dict:
    runs = runs_of(request)
    return {"trainings": [runs.get(r["id"]) for r in runs.list()]}


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
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.get("/api/trainings/{run_id}/events", summary="Follow a training as server-sent events",
            response_class=StreamingResponse, responses={200: {"content": {"text/event-stream": {}}}})
async def training_events(run_id: str, request: Request) -> StreamingResponse:
    """Events: ``state`` (the run, first), then as the trainer writes them ``step`` {step, total, loss, eta_s},
    ``sample`` {step, url}, ``checkpoint``, ``resumed``, ``phase``, and finally one of ``succeeded`` /
    ``failed`` / ``cancelled`` (data: the run). A reader connecting late gets every event from the start."""
    runs = runs_of(request)
    runs.get(run_id)  # 404 before the stream starts

    async def stream():
        yield _sse("state", runs.get(run_id))
        offset, idle = 0, 0.0
        while True:
            events, offset = runs.events(run_id, offset)
            for e in events:
                kind = e.get("type", "event")
                if kind == "sample":
                    e = {**e, "url": f"/api/trainings/{run_id}/files/{e['file']}"}
                if kind in ("step", "sample", "checkpoint", "resumed", "phase", "dataset", "task"):
                    yield _sse(kind, e)
            run = runs.get(run_id)
            if run["status"] in _TERMINAL:
                more, offset = runs.events(run_id, offset)
                for e in more:
                    if e.get("type") in ("step", "sample", "checkpoint"):
                        yield _sse(e["type"], e)
                yield _sse(run["status"], run)
                return
            if await request.is_disconnected():
                return
            await asyncio.sleep(0.25)
            idle = 0.0 if events else idle + 0.25
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def install_trainings(app: FastAPI, settings, guarded, responses: dict | None = None) -> None:
    """Add the routes and start/stop the training supervisor around the app's own lifespan (after the
    engine is loaded: the demo preset and the GPU policy depend on it)."""
    app.include_router(router, dependencies=guarded, tags=["trainings"], responses=responses or {})
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
            try:
                yield state
            finally:
                await asyncio.to_thread(runs.stop, settings.shutdown_grace_s)
                a.state.trainings = None

    app.router.lifespan_context = lifespan


