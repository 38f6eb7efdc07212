"""A bounded FIFO queue in front of the one thread that owns the engine.

Why one thread: the engine (one GPU-resident pipeline with switchable LoRA adapters) is not re-entrant, and
running two requests on one GPU only makes both slower. Why a bounded queue: a client should hear "busy,
retry in N s" (503 + ``Retry-After``) at once rather than wait behind an unbounded backlog. The event loop
only appends to the queue and waits on futures, so ``/health`` answers while an image is being made.

Stopping a job: queued jobs are taken out of the queue; the running one gets ``stop_reason`` set and the
progress callback raises it at the next denoising step (the engine's documented way to stop).

Durable jobs: the worker tells its ``journal`` (the job store, ``app/jobs/``) when a job is accepted, started,
interrupted and finished, so a job's state on disk follows it; direct requests are tied to their connection
and never recorded. Shutdown (``begin_drain``, called at SIGTERM): queued direct requests are answered 503
at once, queued jobs stay queued on disk for the next start, the running image may finish until the grace
ends and is then stopped at its next step (a stopped job goes back to queued on disk). A job kept this way is
let go in the store at once (``released``), so another process sharing the data folder takes it over without
waiting for this one to exit (``app/jobs/sharing.py``).

Faults: an exception while serving one job fails that job and the thread goes on. If the thread itself stops
(an exception that is not an ``Exception``, a bug in the loop), ``failure`` says why, direct requests waiting
for it are answered 503 at once and durable jobs stay on disk (let go, like at a shutdown); ``/ready`` answers
503 and the lifespan stops the process with a non-zero status (``app/jobs/shutdown.py``) so that its supervisor
restarts it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from app.errors import NotReady, RetryLater, ShuttingDown, StorageError
from app.jobs.job import Job
from app.jobs.previews import JobPreviewer
from app.jobs.remote import RemoteJob
from app.jobs.sharing import cancel_elsewhere
from pipelines.errors import Cancelled, DeadlineExceeded, FluxServiceError

logger = logging.getLogger(__name__)


class Worker:
    def __init__(self, engine, queue_size: int, metrics=None, journal=None) -> None:
        self.engine = engine
        self.queue_size = queue_size
        self.metrics = metrics
        self.journal = journal  # the job store (None: jobs are not durable, e.g. a bare worker in a script)
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._running: Job | None = None
        self._accepting = True
        self._stopping = False
        self._drain_deadline: float | None = None  # time.monotonic() at which the running image is stopped
        self._thread: threading.Thread | None = None
        self._mean_s = 5.0  # running mean of a generation, for Retry-After
        #: test hook: extra seconds slept after every denoising step (makes timing tests deterministic)
        self.step_delay_s = 0.0
        #: why the worker thread stopped unexpectedly (``/ready`` answers 503 with it; the lifespan then stops the
        #: process so that its supervisor restarts it), or None
        self.failure: str | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="flux-worker", daemon=True)
        self._thread.start()

    @property
    def thread(self) -> threading.Thread | None:
        """The thread that owns the engine (None before ``start``)."""
        return self._thread

    @property
    def accepting(self) -> bool:
        return self._accepting

    def depth(self) -> int:
        return len(self._queue)

    def busy(self) -> bool:
        return self._running is not None

    @property
    def draining(self) -> bool:
        return self._drain_deadline is not None

    def resume(self, jobs: list[Job]) -> None:
        """Queue jobs accepted before a restart (already on disk), ahead of new work and beyond ``queue_size``:
        they were accepted, so they are not refused now."""
        with self._cond:
            for job in jobs:
                self._queue.append(job)
                job.position = len(self._queue)
            self._cond.notify_all()

    def begin_drain(self, grace_s: float) -> None:
        """Shutdown starts (SIGTERM): take no new work; answer queued direct requests 503 now; keep queued jobs
        on disk for the next start (their event streams end with ``shutdown``); let the running image finish
        until ``grace_s`` from now. Returns at once; ``join`` waits for the worker to stop."""
        with self._cond:
            if self._drain_deadline is not None:
                return
            self._accepting = False
            self._drain_deadline = time.monotonic() + grace_s
            queued = list(self._queue)
            self._queue.clear()
            for job in queued:
                if job.kind == "job" and self.journal is not None:
                    job.suspend("the service is shutting down; this job is kept and runs after the next start")
                    self.journal.released(job)
                else:
                    self._finish(job, ShuttingDown("the service is shutting down and did not start this request; "
                                                   "send it again (to another instance, or after the restart)"))
            self._stopping = True
            self._cond.notify_all()
        logger.info("shutdown: %d queued request(s) refused, %d queued job(s) kept for the next start; %s",
                    sum(j.kind != "job" or self.journal is None for j in queued),
                    sum(j.kind == "job" and self.journal is not None for j in queued),
                    f"waiting up to {grace_s:g}s for the running image" if self._running else "nothing running")

    def hurry(self) -> None:
        """A second signal: stop the running image at its next step."""
        with self._cond:
            self._drain_deadline = time.monotonic()

    def join(self, timeout: float) -> bool:
        """Wait for the worker thread to end (after ``begin_drain``); True when it did."""
        if self._thread is None:
            return True
        self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    def drain(self, grace_s: float) -> None:
        """Shutdown from the lifespan: ``begin_drain`` (if the signal hook did not already) and wait for the stop."""
        self.begin_drain(grace_s)
        remaining = max(0.0, (self._drain_deadline or time.monotonic()) - time.monotonic())
        if not self.join(remaining + 2.0):  # the step running when the grace ended
            logger.warning("shutdown: the worker is still busy 2s after the grace; exiting anyway")

    # ------------------------------------------------------------------ event-loop side
    def submit(self, job: Job) -> None:
        """Put ``job`` at the back of the queue, or raise (503) when full or shutting down."""
        with self._cond:
            if self.failure is not None:
                raise NotReady(f"{self.failure}; the service is restarting, send it again in a moment")
            if not self._accepting:
                raise ShuttingDown("the service is shutting down and takes no new work; send it again (to another "
                                   "instance, or after the restart)")
            if len(self._queue) >= self.queue_size:
                wait = self._mean_s * (len(self._queue) + 1)
                raise RetryLater(f"the queue is full ({self.queue_size} waiting); retry in about {wait:.0f}s",
                                 retry_after_s=min(max(wait, 1.0), 300.0))
            if self.journal is not None and job.kind == "job":
                self.journal.accepted(job)  # on disk before the client hears 202 (raises StorageError: 503)
            self._queue.append(job)
            job.position = len(self._queue)
            job.publish("queued", {"position": job.position})  # under the lock: before any "running"
            self._cond.notify_all()

    def cancel(self, job: Job, reason: FluxServiceError) -> None:
        """Queued: removed now. Running: stopped at the next denoising step. Finished: nothing to do. Held by
        another process sharing the job store: asked through the store (``cancel_elsewhere``)."""
        if isinstance(job, RemoteJob):
            cancel_elsewhere(self.journal, job, reason)
            return
        with self._cond:
            if job in self._queue:
                self._queue.remove(job)
                self._finish(job, reason)
                self._renumber()
            elif job.status == "running" and job.stop_reason is None:
                job.stop_reason = reason
            elif job.suspended and not job.done:  # kept on disk for the next start (shutting down): cancel it there
                self._finish(job, reason)

    def _renumber(self) -> None:
        """Tell every queued job that moved up its new place (called with the lock held, so in order)."""
        for i, queued in enumerate(self._queue, start=1):
            if queued.position != i:
                queued.position = i
                queued.publish("queued", {"position": i})

    # ------------------------------------------------------------------ worker thread
    def _loop(self) -> None:
        """The worker thread. Any exception while serving one job fails that job and the thread goes on; if the
        thread itself is stopped (an exception that is not an ``Exception``, or a bug in this loop), nothing is
        left silently waiting: ``failure`` says why, waiting direct requests get 503 at once, jobs stay on disk."""
        try:
            self._serve()
        except BaseException as exc:  # noqa: BLE001 - recorded and logged: /ready turns 503, the process stops
            self.failure = f"the worker thread stopped unexpectedly ({type(exc).__name__}: {exc})"
            logger.critical("%s; no more images are made in this process", self.failure, exc_info=True)
            self._abandon()

    def _serve(self) -> None:
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
            except Exception:  # noqa: BLE001 - a bug (or a store fault) outside the engine fails one job, never the worker
                logger.exception("job %s: unexpected error in the worker", job.id)
                self._fail_anyway(job, FluxServiceError("internal error while finishing this job; the log has the "
                                                        "details"))
            # (anything else stops the thread with the job still ``_running``: ``_abandon`` answers it)
            with self._cond:
                self._running = None
                self._cond.notify_all()

    def _fail_anyway(self, job: Job, error: FluxServiceError) -> None:
        """End ``job`` with ``error`` even if ``_finish`` itself fails: a waiting client must hear something."""
        try:
            self._finish(job, error)
        except Exception:  # noqa: BLE001
            logger.exception("job %s: could not record its failure", job.id)
        if not job.done:
            job.error, job.status, job.finished_at = error, "failed", time.time()
            job.publish("failed", job.to_dict())

    def _abandon(self) -> None:
        """The thread is stopping for good: answer what waits (direct requests 503 now; durable jobs stay on disk
        and run after the restart) and take no new work."""
        with self._cond:
            self._accepting = False
            waiting = ([self._running] if self._running is not None else []) + list(self._queue)
            self._queue.clear()
        for job in waiting:
            try:
                if job.kind == "job" and self.journal is not None:
                    job.suspend("the worker stopped unexpectedly; this job is kept and runs after the service restarts")
                    self.journal.released(job)  # another process sharing the folder may take it over at once
                else:
                    self._finish(job, NotReady("the worker stopped unexpectedly and did not finish this request; "
                                               "send it again in a moment (the service restarts)"))
            except Exception:  # noqa: BLE001
                logger.exception("job %s: could not be answered", job.id)

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
        if self.journal is not None and job.kind == "job":
            self.journal.started(job)
        job.publish("running", {"step": 0, "total": job.total, "queue_wait": round(waited, 4)})

        def progress(step: int, total: int) -> None:
            if step and self.step_delay_s:
                end = time.monotonic() + self.step_delay_s
                while time.monotonic() < end and job.stop_reason is None and not self._grace_over(job, step, total):
                    time.sleep(min(0.02, self.step_delay_s))
            self._grace_over(job, step, total)
            if job.stop_reason is not None:
                raise job.stop_reason
            if time.monotonic() > job.deadline:
                raise DeadlineExceeded(f"stopped at step {step}/{total}: the request ran past its deadline")
            job.step, job.total = step, total
            job.publish("progress", {"step": step, "total": total})
            if self.journal is not None and job.kind == "job":
                self.journal.progressed(job)  # for readers in other processes sharing the store

        started = time.perf_counter()
        try:
            result = self.engine.generate(job.request, progress=progress, preview=JobPreviewer(job))
            png = result.png_bytes()
        except ShuttingDown as exc:
            if job.kind == "job" and self.journal is not None:  # kept: runs again from step 0 after the restart
                job.suspend(f"{exc.message}; this job is kept and runs again after the next start")  # queued again
                self.journal.interrupted(job)
                self.journal.released(job)
                logger.info("shutdown: job %s stopped at the grace; it runs again after the next start", job.id)
                return
            self._finish(job, exc)
            return
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
        job.info = result.info
        if self.journal is not None and job.kind == "job":
            self._finish(job, None, png=png)  # to a file: a finished job holds no image in memory
        else:
            job.png = png
            self._finish(job, None)

    def _grace_over(self, job: Job, step: int, total: int) -> bool:
        """Past the shutdown grace: stop the running image (at this step)."""
        if self._drain_deadline is None or time.monotonic() < self._drain_deadline or job.stop_reason is not None:
            return job.stop_reason is not None
        job.stop_reason = ShuttingDown(f"stopped at step {step}/{total}: the service is shutting down and its grace "
                                       "period ran out")
        return True

    def _finish(self, job: Job, error: FluxServiceError | None, png: bytes | None = None) -> None:
        if job.done:
            return
        if png is not None:
            try:
                self.journal.save_image(job, png)
            except OSError as exc:  # the log names the file; the client hears the reason, never a server path
                logger.error("job %s: could not save its image: %s", job.id, exc)
                error = StorageError("the image was made but could not be saved in the data folder "
                                     f"({exc.strerror or type(exc).__name__}); submit the job again")
        if error is None:
            status = "succeeded"
        elif isinstance(error, Cancelled):
            status = "cancelled"
        else:
            status = "failed"
        job.error, job.finished_at, job.position = error, time.time(), None
        job.preview = None  # the image (or the error) replaces it
        job.status = status
        if self.journal is not None and job.kind == "job":
            try:
                self.journal.finished(job)  # on disk before any reader hears the terminal event (or kept in memory
            except Exception:  # noqa: BLE001 - and retried by the store); readers must hear it either way
                logger.exception("job %s: could not record its end", job.id)
        if self.metrics is not None:
            self.metrics.requests.labels(job.kind, status if error is None else error.type).inc()
        if status == "failed":
            logger.info("job %s failed: %s: %s", job.id, error.type, error.message)
        job.publish(status, job.to_dict())
