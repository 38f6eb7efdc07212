"""One unit of work for the GPU worker: a direct ``/api/generate-image`` request or a ``/api/jobs`` job.

Why one class for both: they share the queue, the validation, the deadline and the cancellation rules, so
they must be the same thing in the queue (FIFO fairness between the two comes for free). The worker
thread changes a job's state; the event loop reads it. Every change is appended to an event log under a
lock and the loop is woken with ``call_soon_threadsafe``, so server-sent-event readers never miss a step
and never block the worker.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone

from pipelines.errors import FluxServiceError
from pipelines.types import GenerationInfo, GenerationRequest

TERMINAL = ("succeeded", "failed", "cancelled")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(eq=False)
class Job:
    request: GenerationRequest  # seed already fixed by the plan, so the job is reproducible from submission
    kind: str  # "generate" (direct request) or "job"
    deadline: float  # time.monotonic() by which it must be done
    total: int
    adapter: str | None = None
    lora_scale: float = 0.0
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: str = "queued"
    position: int | None = None  # 1 = next to run
    step: int = 0
    info: GenerationInfo | None = None
    png: bytes | None = None
    error: FluxServiceError | None = None
    #: event streams that asked for live previews (app/jobs/previews.py), and the newest preview (or None)
    preview_watchers: int = 0
    preview: dict | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    enqueued_mono: float = field(default_factory=time.monotonic)
    #: which engine replica made it (Ray Serve's replica id; "local" in the single-process service)
    replica: str | None = None
    #: set by whoever wants it stopped; the worker raises it at the next denoising step
    stop_reason: FluxServiceError | None = None
    image_bytes: int = 0  # size of the PNG file in the job store (durable jobs)
    image_sha256: str | None = None  # its sha256, checked when the file is served
    #: times a worker started it (a restart interrupted the earlier ones); kept in the job store
    attempts: int = 0
    #: set when the service shut down before the job ended: it stays queued on disk and runs after the next start
    suspended: str | None = None

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[str, dict]] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._done_waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []

    # ------------------------------------------------------------------ state as clients see it
    @property
    def seed(self) -> int:
        return self.request.seed if self.request.seed is not None else -1

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    def to_dict(self) -> dict:
        from app.errors import error_body

        return {
            "id": self.id,
            "status": self.status,
            "position": self.position if self.status == "queued" else None,
            "step": self.step,
            "total": self.total,
            "seed": self.seed,
            "task": self.request.task,
            "adapter": self.adapter,
            "lora_scale": self.lora_scale,
            "width": self.request.width,
            "height": self.request.height,
            "error": error_body(self.error) if self.error is not None else None,
            "info": self.info.to_dict() if self.info is not None else None,
            "replica": self.replica,
            "created_at": _iso(self.created_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "image_url": f"/api/jobs/{self.id}/image" if self.status == "succeeded" and self.kind == "job" else None,
        }

    def suspend(self, message: str) -> None:
        """The service is stopping before this (durable) job ended: it is kept queued in the job store and runs
        again after the next start. Its event readers get a final ``shutdown`` event saying so."""
        self.status, self.position, self.step, self.started_at = "queued", None, 0, None
        self.suspended = message
        self.publish("shutdown", {**self.to_dict(), "message": message})

    # ------------------------------------------------------------------ events (any thread -> event loop)
    def publish(self, name: str, data: dict) -> None:
        with self._lock:
            self._events.append((name, data))
            waiters, self._waiters = self._waiters, []
            done_waiters = []
            if name in TERMINAL:
                done_waiters, self._done_waiters = self._done_waiters, []
        for loop, fut in waiters + done_waiters:
            loop.call_soon_threadsafe(_resolve, fut)

    def snapshot(self) -> tuple[dict, int]:
        """The current state and the event-log position it corresponds to (for late SSE readers)."""
        with self._lock:
            return self.to_dict(), len(self._events)

    def events_since(self, index: int) -> list[tuple[str, dict]]:
        with self._lock:
            return self._events[index:]

    async def wait_for_events(self, index: int, timeout: float) -> None:
        """Return when the log has grown past ``index`` or after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if len(self._events) > index:
                return
            self._waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self._forget(self._waiters, fut)

    async def wait_done(self, timeout: float | None) -> bool:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            if self.done:
                return True
            self._done_waiters.append((loop, fut))
        try:
            await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            self._forget(self._done_waiters, fut)
            return False
        return True

    def _forget(self, waiters: list, fut: asyncio.Future) -> None:
        """Drop a timed-out waiter, so a long wait polled in short slices does not pile futures up."""
        with self._lock:
            waiters[:] = [w for w in waiters if w[1] is not fut]


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
