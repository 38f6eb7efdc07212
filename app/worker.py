"""A bounded FIFO queue in front of the one thread that owns the engine.

Why one thread: the engine (one GPU-resident pipeline with switchable LoRA adapters) is not re-entrant, and
running two requests on one GPU only makes both slower. Why a bounded queue: a client should hear "busy,
retry in N s" (503 + ``Retry-After``) at once rather than wait behind an unbounded backlog. The event loop
only appends to the queue and waits on futures, so ``/health`` answers while an image is being made.

Stopping a job: queued jobs are taken out of the queue; the running one gets ``stop_reason`` set and the
progress callback raises it at the next denoising step (the engine's documented way to stop).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from pipelines.errors import Cancelled, DeadlineExceeded, FluxServiceError

from .errors import NotReady, RetryLater
from .job import Job
from .live_preview import JobPreviewer

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, engine, queue_size: int, metrics=None) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.metrics = metrics
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._accepting = True
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._mean_s = 5.0  # running mean of a generation, for Retry-After
        #: test hook: extra seconds slept after every denoising step (makes timing tests deterministic)
        self.step_delay_s = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="flux-worker", daemon=True)
        self._thread.start()

    @property
    def accepting(self) -> bool:
        return self._accepting

    def depth(self) -> int:
        return len(self._queue)

    def busy(self) -> bool:
        return self._running is not None

    def drain(self, grace_s: float) -> None:
        """Shutdown: refuse new work, cancel what waits, let the running job finish for ``grace_s`` seconds."""
        with self._cond:
            self._accepting = False
            queued = list(self._queue)
        for job in queued:
            self.cancel(job, Cancelled("the service is shutting down; retry on another instance"))
        deadline = time.monotonic() + grace_s
        with self._cond:
            while self._running is not None and time.monotonic() < deadline:
                self._cond.wait(timeout=0.1)
            if self._running is not None:
                logger.warning("shutdown: job %s still running after %.0fs, stopping it", self._running.id, grace_s)
                self._running.stop_reason = Cancelled("the service is shutting down")
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=max(grace_s, 1.0) + 30.0)

    # ------------------------------------------------------------------ event-loop side
    def submit(self, job: Job) -> None:
        """Put ``job`` at the back of the queue, or raise (503) when full or shutting down."""
        with self._cond:
            if not self._accepting:
                raise NotReady("the service is shutting down and takes no new work")
            if len(self._queue) >= self.queue_size:
                wait = self._mean_s * (len(self._queue) + 1)
                raise RetryLater(f"the queue is full ({self.queue_size} waiting); retry in about {wait:.0f}s",
                                 retry_after_s=min(max(wait, 1.0), 300.0))
            self._queue.append(job)
            job.position = len(self._queue)
            job.publish("queued", {"position": job.position})  # under the lock: before any "running"
            self._cond.notify_all()

    def cancel(self, job: Job, reason: FluxServiceError) -> None:
        """Queued: removed now. Running: stopped at the next denoising step. Finished: nothing to do."""
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self._finish(job, reason)
                self._renumber()
            elif job.status == "running" and job.stop_reason is None:
                job.stop_reason = reason

    def _renumber(self) -> None:
        """Tell every queued job that moved up its new place (called with the lock held, so in order)."""
        for i, queued in enumerate(self._queue, start=1):
            if queued.position != i:
                queued.position = i
                queued.publish("queued", {"position": i})

    # ------------------------------------------------------------------ worker thread
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if self._stopping and not self._queue:
                    return
                job = self._queue.popleft()
                self._running = job
                job.status, job.position, job.started_at = "running", None, time.time()
                job.replica = "local"
                self._renumber()
            try:
                self._run(job)
            finally:
                with self._cond:
                    self._running = None
                    self._cond.notify_all()

    def _run(self, job: Job) -> None:
        waited = time.monotonic() - job.enqueued_mono
        if self.metrics is not None:
            self.metrics.queue_wait.observe(waited)
        if time.monotonic() > job.deadline:
            self._finish(job, DeadlineExceeded("the request waited in the queue past its deadline"))
            return
        if job.stop_reason is not None:
            self._finish(job, job.stop_reason)
            return
        job.publish("running", {"step": 0, "total": job.total, "queue_wait": round(waited, 4)})

        def progress(step: int, total: int) -> None:
            if step and self.step_delay_s:
                end = time.monotonic() + self.step_delay_s
                while time.monotonic() < end and job.stop_reason is None:
                    time.sleep(min(0.02, self.step_delay_s))
            if job.stop_reason is not None:
                raise job.stop_reason
            if time.monotonic() > job.deadline:
                raise DeadlineExceeded(f"stopped at step {step}/{total}: the request ran past its deadline")
            job.step, job.total = step, total
            job.publish("progress", {"step": step, "total": total})

        started = time.perf_counter()
        try:
            result = self.engine.generate(job.request, progress=progress, preview=JobPreviewer(job))
            png = result.png_bytes()
        except FluxServiceError as exc:
            self._finish(job, exc)
            return
        except Exception:  # noqa: BLE001 - a bug must fail one job, never the worker
            logger.exception("job %s failed unexpectedly", job.id)
            self._finish(job, FluxServiceError("internal error while generating; the log has the details"))
            return
        elapsed = time.perf_counter() - started
        self._mean_s = 0.8 * self._mean_s + 0.2 * elapsed
        if self.metrics is not None:
            self.metrics.generation.observe(elapsed)
        job.info, job.png = result.info, png
        self._finish(job, None)

    def _finish(self, job: Job, error: FluxServiceError | None) -> None:
        if job.done:
            return
        if error is None:
            status = "succeeded"
        elif isinstance(error, Cancelled):
            status = "cancelled"
        else:
            status = "failed"
        job.error, job.finished_at, job.position = error, time.time(), None
        job.preview = None  # the image (or the error) replaces it
        job.status = status
        if self.metrics is not None:
            self.metrics.requests.labels(job.kind, status if error is None else error.type).inc()
        if status == "failed":
            logger.info("job %s failed: %s: %s", job.id, error.type, error.message)
        job.publish(status, job.to_dict())
