"""``POST /api/generate-image``: one image, returned as PNG bytes in the response to the same request.

The request waits in the shared FIFO queue like a job, but it is tied to its connection: if the client goes
away while queued it is dropped, while running it is stopped at the next denoising step. The deadline
(``request_timeout_s``, queue wait included) answers 504 at once and stops the work too. Headers say what
was used, so a ``curl -o host.png`` user can still tell task, adapter, strength and seed.
"""

from __future__ import annotations

import json
import time

from fastapi import APIRouter, Request, Response

from pipelines.errors import Cancelled, DeadlineExceeded

from ..deps import worker_of
from ..job import Job
from ..prompt_headers import PROMPT_HEADERS, prompt_headers
from ..schemas import error_envelope_schema, request_body_openapi
from ..submission import submit

router = APIRouter()

#: every header a browser script may read (CORS ``expose_headers``)
RESULT_HEADERS = ["X-Task", "X-Adapter", "X-Adapter-File", "X-Lora-Scale", "X-Seed", "X-Steps",
                  "X-Guidance-Scale", "X-Width", "X-Height", "X-Generation-Time", "X-Queue-Wait",
                  "X-Demo-Model", "X-Prompt-Warnings", "X-Job-Id", "X-Loras", "Retry-After", *PROMPT_HEADERS]

_ERRORS = {code: {"description": text, "content": {"application/json": {"schema": error_envelope_schema()}}}
           for code, text in [(401, "API key missing or wrong"), (413, "body too large"),
                              (422, "invalid parameters"), (503, "queue full, out of memory or not ready"),
                              (504, "deadline exceeded")]}


def result_headers(job: Job) -> dict[str, str]:
    info = job.info
    if info is None:
        raise RuntimeError(f"job {job.id} has no result")
    queue_wait = (job.started_at - job.created_at) if job.started_at else 0.0
    return {
        "X-Task": info.task or "none",
        "X-Adapter": info.adapter_name or "none",
        "X-Adapter-File": info.adapter_file or "none",
        "X-Lora-Scale": f"{info.lora_scale:g}",
        "X-Seed": str(info.seed),
        "X-Steps": str(info.num_inference_steps),
        "X-Guidance-Scale": f"{info.guidance_scale:g}",
        "X-Width": str(info.width),
        "X-Height": str(info.height),
        "X-Generation-Time": f"{info.timings.get('total_s', 0.0):.3f}",
        "X-Queue-Wait": f"{max(queue_wait, 0.0):.3f}",
        "X-Demo-Model": "true" if info.demo else "false",
        # ensure_ascii: headers are latin-1; "\\u79d1" survives any proxy, raw UTF-8 does not
        "X-Prompt-Warnings": json.dumps(info.warnings, ensure_ascii=True),
        "X-Job-Id": job.id,
        # every LoRA of the image (several per request): [{"name", "scale"}]
        "X-Loras": json.dumps([{"name": x["name"], "scale": x["scale"]} for x in info.loras], ensure_ascii=True),
        **prompt_headers(info),  # what the prompt stage sent to each text encoder (app/prompt_headers.py)
    }


async def wait_for_result(request: Request, job: Job) -> None:
    """Wait until ``job`` is done, the deadline passes (504, work stopped) or the client leaves (work stopped)."""
    worker = worker_of(request)
    timeout = request.app.state.settings.request_timeout_s
    while not job.done:
        remaining = job.deadline - time.monotonic()
        if remaining <= 0:
            message = f"the request did not finish within {timeout:g}s (queue wait included) and was stopped"
            worker.cancel(job, DeadlineExceeded(message))
            if job.status == "succeeded":  # finished in the same instant
                return
            raise DeadlineExceeded(message)
        if await job.wait_done(timeout=min(0.25, remaining)):
            return
        if await request.is_disconnected():
            worker.cancel(job, Cancelled("the client disconnected"))
            return


@router.post("/api/generate-image", response_class=Response, openapi_extra=request_body_openapi(),
             summary="Generate one image (PNG bytes)",
             responses={200: {"content": {"image/png": {}}, "description": "the image; headers say what was used"},
                        **_ERRORS})
async def generate_image(request: Request) -> Response:
    job = await submit(request, "generate")
    await wait_for_result(request, job)
    if not job.done:  # client went away; nobody reads this response
        return Response(status_code=499)
    if job.status == "succeeded":
        return Response(job.png, media_type="image/png", headers=result_headers(job))
    raise job.error
