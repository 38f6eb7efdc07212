"""Test-only routes, mounted only when ``settings.enable_test_hooks`` is true (never in production).

They make fault and timing tests deterministic without a GPU: inject a CUDA out-of-memory error into the
next denoising step, or slow every denoising step down so a test can cancel, fill the queue or pass a
deadline while a job is surely running.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ..deps import engine_of, worker_of

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
