"""``POST /api/generate-image``: one image, returned as PNG bytes in the response to the same request.

The request waits in the shared FIFO queue like a job, but it is tied to its connection: if the client goes
away while queued it is dropped, while running it is stopped at the next denoising step. The deadline
(``request_timeout_s``, queue wait included) answers 504 at once and stops the work too. Headers say what
was used, so a ``curl -o host.png`` user can still tell task, adapter, strength and seed.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request, Response

from app.http.deps import worker_of
from app.http.openapi import error_responses, png_response, request_body
from app.http.prompt_headers import PROMPT_HEADER_DOCS, PROMPT_HEADERS, capped_json, prompt_headers
from app.http.submission import submit
from app.jobs.job import Job
from pipelines.errors import Cancelled, DeadlineExceeded

router = APIRouter()

#: every header a browser script may read (CORS ``expose_headers``)
RESULT_HEADERS = ["X-Task", "X-Adapter", "X-Adapter-File", "X-Adapter-Hash", "X-Adapter-Warnings", "X-Lora-Scale", "X-Seed", "X-Steps",
                  "X-Guidance-Scale", "X-Width", "X-Height", "X-Generation-Time", "X-Queue-Wait",
                  "X-Demo-Model", "X-Prompt-Warnings", "X-Job-Id", "X-Replica", "X-Loras", "Retry-After",
                  *PROMPT_HEADERS]

#: what each result header says; the OpenAPI document describes every ``X-*`` name of RESULT_HEADERS from this
HEADER_DOCS = {
    "X-Task": "The task used, or `none` (base model).",
    "X-Adapter": "The LoRA adapter name, or `none`.",
    "X-Adapter-File": "The adapter's file relative to the models folder, or `none`.",
    "X-Adapter-Hash": "sha256 of the adapter file, first 12 hex digits (as `flux-service lora inspect` prints), "
                      "or `none`.",
    "X-Adapter-Warnings": "JSON list (ASCII-escaped) of warnings about the adapter, e.g. the demo LoRA standing in "
                          "for yours; cut at 2048 characters like X-Prompt-Warnings.",
    "X-Lora-Scale": "The LoRA strength applied (0 without a LoRA).",
    "X-Seed": "The seed used (send it back as `seed` to get the same image).",
    "X-Steps": "Denoising steps run.",
    "X-Guidance-Scale": "Guidance scale used.",
    "X-Width": "Image width in pixels.",
    "X-Height": "Image height in pixels.",
    "X-Generation-Time": "Seconds spent generating (queue wait excluded).",
    "X-Queue-Wait": "Seconds spent waiting in the queue.",
    "X-Demo-Model": "`true` when the embedded demo model (random weights) made the image.",
    "X-Prompt-Warnings": "JSON list of warnings (ASCII-escaped): prompt truncation, text T5 could not read...; "
                         "past 2048 characters the list is cut and its last item ends with `…[cut: ...]` (the full "
                         "list is in the PNG metadata and the job's info).",
    "X-Job-Id": "The id of the job that made it.",
    "X-Replica": "The engine replica that made it under Ray Serve (`flux-service serve --ray`), else `local`.",
    "X-Loras": "JSON list (ASCII-escaped) of every LoRA of the image with its strength: "
               "`[{\"name\": ..., \"scale\": ...}]` (`[]` without a LoRA); X-Adapter/X-Lora-Scale name the first.",
    **PROMPT_HEADER_DOCS,
}


def result_headers(job: Job) -> dict[str, str]:
    info = job.info
    if info is None:
        raise RuntimeError(f"job {job.id} has no result")
    queue_wait = (job.started_at - job.created_at) if job.started_at else 0.0
    return {
        "X-Task": info.task or "none",
        "X-Adapter": info.adapter_name or "none",
        # the LoRA file relative to the models folder ("demo:..." for the demo's own), never an absolute path,
        # and its sha256 (12 hex digits, as `flux-service lora inspect` prints): which file made this picture
        "X-Adapter-File": _latin1(info.adapter_file or "none"),
        "X-Adapter-Hash": info.adapter_hash or "none",
        # warnings about the adapter alone (the demo's LoRA standing in for yours); all warnings: X-Prompt-Warnings
        "X-Adapter-Warnings": capped_json([w for w in info.warnings if "LoRA" in w]),
        "X-Lora-Scale": f"{info.lora_scale:g}",
        "X-Seed": str(info.seed),
        "X-Steps": str(info.num_inference_steps),
        "X-Guidance-Scale": f"{info.guidance_scale:g}",
        "X-Width": str(info.width),
        "X-Height": str(info.height),
        "X-Generation-Time": f"{info.timings.get('total_s', 0.0):.3f}",
        "X-Queue-Wait": f"{max(queue_wait, 0.0):.3f}",
        "X-Demo-Model": "true" if info.demo else "false",
        # ASCII JSON: headers are latin-1; "\\u79d1" survives any proxy, raw UTF-8 does not. Cut at 2048 characters
        # with a marker, like the X-Prompt-* headers (a long prompt's truncation warnings quote what was dropped)
        "X-Prompt-Warnings": capped_json(info.warnings),
        "X-Job-Id": job.id,
        "X-Replica": job.replica or "local",  # Ray Serve: the engine replica that made it (app/ray_serve)
        # every LoRA of the image (several per request): [{"name", "scale"}]
        "X-Loras": json.dumps([{"name": x["name"], "scale": x["scale"]} for x in info.loras], ensure_ascii=True),
        **prompt_headers(info),  # what the prompt stage sent to each text encoder (app/http/prompt_headers.py)
    }


def _latin1(text: str) -> str:
    """Header values are latin-1: a non-ASCII file name travels escaped like the warnings are."""
    return text if text.isascii() else json.dumps(text, ensure_ascii=True)[1:-1]


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
        try:
            if await job.wait_done(timeout=min(0.25, remaining)):
                return
        except asyncio.CancelledError:  # servers that cancel the handler on disconnect (Ray Serve's proxy)
            worker.cancel(job, Cancelled("the client disconnected"))
            raise
        if await request.is_disconnected():
            worker.cancel(job, Cancelled("the client disconnected"))
            return


@router.post("/api/generate-image", response_class=Response, openapi_extra=request_body(),
             summary="Generate one image (PNG bytes)",
             responses={200: png_response("The image; the headers say what was used.", RESULT_HEADERS, HEADER_DOCS),
                        **error_responses(413, 422, 500, 503, 504)})
async def generate_image(request: Request) -> Response:
    job = await submit(request, "generate")
    await wait_for_result(request, job)
    if not job.done:  # client went away; nobody reads this response
        return Response(status_code=499)
    if job.status == "succeeded":
        return Response(job.png, media_type="image/png", headers=result_headers(job))
    raise job.error
