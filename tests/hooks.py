"""Test-only routes (``/_test/fault``, ``/_test/step-delay``, ``/_test/kill-worker``), added by tests to the apps
they build.

Why here and not in ``app/``: fault injection must never ship in a product path that a misconfigured server
could expose. Tests add the router to the app object they create (``hooked(create_app(...))``); servers in
their own process run one of the entry points below instead of the product's.

They make fault and timing tests deterministic without a GPU: inject a CUDA out-of-memory error into the
next denoising step, or slow every denoising step down so a test can cancel, fill the queue or pass a
deadline while a job is surely running, or stop the worker thread itself (an exception raised inside it that
no ``except Exception`` catches, as a bug in the loop would) to test what a dead worker does to the service.

Entry points: ``uvicorn --factory tests.hooks:create_app`` (as ``app.main:create_app``), ``uvicorn
tests.hooks:app`` (as ``app.main:app``) and ``python -m tests.hooks serve ...`` (as ``flux-service serve``).
"""

from __future__ import annotations

import sys
from typing import Literal

from fastapi import APIRouter, FastAPI, Request
from pydantic import BaseModel, Field

from app.http.deps import engine_of, worker_of

router = APIRouter(prefix="/_test", include_in_schema=False)


class Fault(BaseModel):
    kind: Literal["oom"] = "oom"


class StepDelay(BaseModel):
    seconds: float = Field(ge=0, le=10)


@router.post("/fault")
async def inject_fault(fault: Fault, request: Request) -> dict:
    import torch

    engine_of(request).inject_fault_once(torch.OutOfMemoryError("CUDA out of memory (injected by test hook)"))
    return {"armed": fault.kind}


@router.post("/step-delay")
async def set_step_delay(delay: StepDelay, request: Request) -> dict:
    worker_of(request).step_delay_s = delay.seconds
    return {"step_delay_s": delay.seconds}


class InjectedCrash(BaseException):
    """Raised inside the worker thread by ``/_test/kill-worker`` (a BaseException: it stops the thread)."""


@router.post("/kill-worker")
async def kill_worker(request: Request) -> dict:
    """Raise ``InjectedCrash`` in the worker thread at its next Python instruction (it must be running: slow the
    steps down and start a job first; a thread waiting for work would only see it when woken)."""
    import ctypes

    thread = worker_of(request).thread
    hit = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(InjectedCrash))
    return {"raised_in": hit}


def hooked(app: FastAPI) -> FastAPI:
    """``app`` with the test routes added (the routes read the app's engine and worker at request time)."""
    app.include_router(router)
    return app


def create_app(*args, **kwargs) -> FastAPI:
    """``app.main.create_app`` plus the test routes."""
    from app.http.factory import create_app as product_create_app  # the original, even while main() patches

    return hooked(product_create_app(*args, **kwargs))


def __getattr__(name: str):
    """``uvicorn tests.hooks:app``: like ``app.main:app`` (built from the environment on first access)."""
    if name == "app":
        built = globals()["app"] = create_app()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    """``flux-service`` with the test routes added to the app that ``serve`` builds."""
    import app.main
    from cli.main import main as cli_main

    app.main.create_app = create_app  # `serve` imports it from app.main when it runs
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
