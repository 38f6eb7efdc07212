"""Service-level routes: the task list, liveness, readiness and Prometheus metrics.

``/health`` answers as long as the event loop runs (it never waits for the GPU), ``/ready`` only while
the model is loaded and the service takes work: a load balancer sends traffic on ``/ready`` and restarts
on ``/health``.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.http.deps import engine_of
from app.http.openapi import error_responses
from pipelines.tasks import MAX_LORA_ALPHA, MIN_LORA_ALPHA
from pipelines.types import TaskInfo

router = APIRouter()
api = APIRouter()  # under /api, behind the API key


class Limits(BaseModel):
    min_size: int
    max_size: int
    size_multiple: int
    max_steps: int
    lora_alpha: list[float]
    guidance_scale: list[float]
    max_prompt_chars: int


class Tasks(BaseModel):
    """What ``GET /api/tasks`` answers (documentation only: the route returns its dict as is)."""

    model: str
    model_type: str
    demo: bool
    tasks: list[TaskInfo]
    limits: Limits


class ReadyState(BaseModel):
    status: Literal["ready", "loading", "draining", "storage_unavailable", "failed"]
    demo: bool | None = None
    #: with `storage_unavailable` and `failed`: what is wrong, in words
    reason: str | None = None


@api.get("/api/tasks", summary="Tasks, the model and the request limits", response_model=None,
         responses={200: {"model": Tasks, "description": "The task table, the model and the limits in force."},
                    **error_responses(503)})
async def list_tasks(request: Request) -> dict:
    engine = engine_of(request)
    s = engine.settings  # the limits `engine.plan` enforces
    from pipelines.planning import MAX_GUIDANCE  # keep the bound in one place

    return {
        "model": engine.source.label,
        "model_type": engine.source.model_type,
        "demo": engine.is_demo,
        "tasks": [t.to_dict() for t in engine.task_infos()],
        "limits": {"min_size": s.min_size, "max_size": s.max_size, "size_multiple": 16, "max_steps": s.max_steps,
                   "lora_alpha": [MIN_LORA_ALPHA, MAX_LORA_ALPHA], "guidance_scale": [0.0, MAX_GUIDANCE],
                   "max_prompt_chars": s.max_prompt_chars},
    }


@api.get("/api/loras", summary="Registered LoRAs: name, hash, rank, targets, tasks using them")
async def list_loras(request: Request) -> dict:
    engine = engine_of(request)
    return {"adapter_strategy": engine.adapter_strategy, "compiled": engine.compiled,
            "compilations": engine.compilations.total, "loras": engine.lora_infos()}


@router.get("/health", summary="Liveness")
async def health() -> dict:
    return {"status": "ok"}


@router.get("/ready", summary="Readiness: model loaded and taking work", response_model=None,
            responses={200: {"model": ReadyState, "description": "Ready."},
                       503: {"model": ReadyState,
                             "description": "Not taking work (`status` says why): `loading`, `draining` (shutting "
                                            "down), `storage_unavailable` (the job store cannot be written now: "
                                            "`reason` says why; it retries), `failed` (the worker stopped; the "
                                            "process exits so that its supervisor restarts it).",
                             "headers": {"Retry-After": {"schema": {"type": "integer"}}}}})
async def ready(request: Request) -> JSONResponse:
    engine = getattr(request.app.state, "engine", None)
    worker = getattr(request.app.state, "worker", None)
    if engine is None or worker is None:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
    failure = getattr(worker, "failure", None)
    if failure is not None:
        return JSONResponse({"status": "failed", "reason": failure}, status_code=503, headers={"Retry-After": "10"})
    if not worker.accepting:
        return JSONResponse({"status": "draining"}, status_code=503)
    store = getattr(request.app.state, "jobs", None)
    fault = store.fault() if store is not None else None  # memory only: no database access on the event loop
    if fault is not None:
        return JSONResponse({"status": "storage_unavailable", "reason": fault}, status_code=503,
                            headers={"Retry-After": "5"})
    return JSONResponse({"status": "ready", "demo": engine.is_demo})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"description": "Prometheus text format.",
                             "content": {"text/plain": {"schema": {"type": "string"}}}}})
async def metrics(request: Request) -> Response:
    m = request.app.state.metrics
    return Response(m.render(), media_type=m.content_type)
