"""The shape of a job as clients see it (``Job.to_dict()``), for the OpenAPI schema and generated clients.

Why a model that only documents: the routes return ``Job.to_dict()`` as is, so a field added there reaches
clients at once and is never filtered out by a ``response_model``; this model gives the schema its status
enum and field types. ``tests/test_http_contract.py`` validates real job answers against it, and
schemathesis checks every documented response, so the two cannot drift apart unnoticed. ``info`` is the
``GenerationInfo`` dataclass itself, so a field added to the result record is documented here by itself.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from app.errors import ErrorBody
from pipelines.types import GenerationInfo

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class Job(BaseModel):
    """A queued, running or finished job. ``status`` ends as one of succeeded, failed, cancelled."""

    id: str
    status: JobStatus
    position: int | None = Field(description="Place in the queue while queued (1 = next), else null.")
    step: int = Field(description="Denoising steps done.")
    total: int = Field(description="Denoising steps in all.")
    seed: int = Field(description="The seed, fixed at submission (replaying it gives the same image).")
    task: str | None
    adapter: str | None = Field(description="The LoRA adapter used, or null for none.")
    lora_scale: float
    width: int | None
    height: int | None
    error: ErrorBody | None = Field(description="Why it failed or was cancelled; null otherwise.")
    info: GenerationInfo | None = Field(description="Everything that decided the pixels, once succeeded.")
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    image_url: str | None = Field(description="Where the PNG is, once succeeded.")
