"""The ingress side of a generation: a ``Worker`` whose queue is Ray Serve's and whose engine is a replica.

``create_app`` keeps every route; only ``submit``/``cancel``/``drain`` change. ``submit`` starts one asyncio
task per job that streams ``engine.generate`` from a replica (``handle.options(stream=True,
multiplexed_model_id=<the job's LoRA set>)``) and replays its events into the job, so ``/api/jobs/{id}/events``,
the page's progress bar and ``/api/generate-image`` behave as in one process. ``cancel`` sets the job's stop
reason and calls ``cancel()`` on the Ray response (DELETE, client gone, deadline), which stops the replica at
its next denoising step.

Failure rules (stated in docs/deploy.md):
- Ray's queue full (``BackPressureError``): a direct request gets 503 + ``Retry-After``; a job accepted by
  ``POST /api/jobs`` stays queued here and is offered again until its deadline (accepted work is never
  dropped). At most ``queue_size`` such jobs wait in the ingress, beyond that ``POST /api/jobs`` answers 503.
- The replica dies mid-request (``RayActorError`` and friends): a direct request gets 503 + ``Retry-After``
  (Ray Serve is already starting a new replica); a job is retried once on a live replica, then fails with
  that 503 error in its state.
The job store stays in the ingress; see docs/deploy.md for what must be shared with several ingresses.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter, Histogram

from app.errors import NotReady, RetryLater
from app.jobs.worker import Worker
from pipelines import errors as pipeline_errors
from pipelines.errors import Cancelled, DeadlineExceeded, FluxServiceError
from pipelines.types import GenerationInfo

logger = logging.getLogger(__name__)


def rebuild_error(data: dict) -> FluxServiceError:
    """A replica's typed error, as the same class here (so app/errors.py maps it to the same status)."""
    if data.get("retry_after_s") is not None:
        return RetryLater(data["message"], retry_after_s=data["retry_after_s"])
    cls = getattr(pipeline_errors, data.get("cls", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, FluxServiceError)):
        cls = FluxServiceError
    exc = cls.__new__(cls)
    Exception.__init__(exc, data["message"])
    exc.message, exc.param = data["message"], data.get("param")
    return exc


def lora_set_id(engine, job) -> str:
    """The multiplexing model id: the resolved file of the job's LoRA ("" = base model, any replica)."""
    if job.adapter is None:
        return ""
    plan = engine.plan(job.request)  # cheap; the LoRA file is already known to the planning engine
    return str(plan.adapter.file) if plan.adapter else ""


class RayWorker(Worker):
    def __init__(self, handle, engine, queue_size: int, metrics=None, journal=None) -> None:
        super().__init__(engine, queue_size, metrics, journal=journal)
        self._resumed: list = []  # jobs accepted before a restart, started once the event loop is known
        self.handle = handle
        self._tasks: dict = {}  # job -> asyncio.Task driving it
        self._responses: dict = {}  # job -> the Ray streaming response while one is open
        self._waiting_jobs = 0  # /api/jobs jobs held here because Ray's queue was full
        self._loop: asyncio.AbstractEventLoop | None = None
        if metrics is not None:
            self.replica_requests = Counter("flux_replica_requests", "Generations by engine replica and outcome.",
                                            ["replica", "outcome"], registry=metrics.registry)
            self.replica_seconds = Histogram("flux_replica_generation_seconds",
                                             "Time an engine replica took for one image.", ["replica"],
                                             buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
                                             registry=metrics.registry)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        resumed, self._resumed = self._resumed, []
        for job in resumed:  # accepted before the restart (already in the job store): never refused now
            self._tasks[job] = self._loop.create_task(self._drive(job))

    def resume(self, jobs: list) -> None:
        """Jobs read back from the durable store at start-up: they go to the replicas once ``start`` ran."""
        self._resumed.extend(jobs)

    def depth(self) -> int:
        return sum(1 for job in self._tasks if job.status == "queued")

    def busy(self) -> bool:
        return any(job.status == "running" for job in self._tasks)

    def drain(self, grace_s: float) -> None:
        """Shutdown (called from a thread): refuse new work, let running images finish for ``grace_s``."""
        self._accepting = False
        deadline = time.monotonic() + grace_s
        while self._tasks and time.monotonic() < deadline:
            time.sleep(0.1)
        for job in list(self._tasks):
            if self._loop is not None and not self._loop.is_closed():
                self._loop.call_soon_threadsafe(self.cancel, job, Cancelled("the service is shutting down"))

    # ------------------------------------------------------------------ event-loop side
    def submit(self, job) -> None:
        if not self._accepting or self._loop is None:
            raise NotReady("the service is shutting down and takes no new work")
        if job.kind == "job" and self._waiting_jobs >= self.queue_size:
            raise RetryLater(f"the queue is full ({self.queue_size} jobs waiting for a replica); retry in about "
                             f"{self._mean_s:.0f}s", retry_after_s=min(max(self._mean_s, 1.0), 300.0))
        if self.journal is not None and job.kind == "job":
            self.journal.accepted(job)  # on disk before the client hears 202, as in the single-process worker
        job.position = self.depth() + 1
        job.publish("queued", {"position": job.position})
        self._tasks[job] = self._loop.create_task(self._drive(job))

    def cancel(self, job, reason: FluxServiceError) -> None:
        if job.done:
            return
        if job.stop_reason is None:
            job.stop_reason = reason
        response = self._responses.get(job)
        if response is not None:
            response.cancel()
        elif job in self._tasks:  # between two tries (backpressure wait): nothing runs on a replica
            self._tasks[job].cancel()

    # ------------------------------------------------------------------ one job through Ray
    async def _drive(self, job) -> None:
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import (
            BackPressureError,
            DeploymentUnavailableError,
            ReplicaUnavailableError,
        )

        died_once = False
        held = False
        try:
            while True:
                try:
                    await self._stream(job)
                    return
                except BackPressureError as exc:
                    wait = float(exc.retry_after_s or max(self._mean_s, 1.0))
                    if job.kind != "job":
                        self._finish(job, RetryLater(f"all engine replicas are busy and Ray's queue is full "
                                                     f"({self.queue_size}); retry in about {wait:.0f}s",
                                                     retry_after_s=min(max(wait, 1.0), 300.0)))
                        return
                    if not held:
                        held, self._waiting_jobs = True, self._waiting_jobs + 1
                    await asyncio.sleep(min(wait, 1.0))
                except (RayActorError, ReplicaUnavailableError, DeploymentUnavailableError) as exc:
                    replica = job.replica or "?"
                    self._count(replica, "replica_died")
                    if job.kind == "job" and not died_once:
                        died_once = True
                        logger.warning("job %s: replica %s died mid-request (%s); retrying it once", job.id,
                                       replica, type(exc).__name__)
                        job.status, job.step, job.replica = "queued", 0, None
                        job.publish("queued", {"position": self.depth(), "retry": "the replica died"})
                        continue
                    logger.warning("job %s: replica %s died mid-request (%s)", job.id, replica, type(exc).__name__)
                    self._finish(job, RetryLater(f"the engine replica {replica} died while making this image; Ray "
                                                 "Serve is starting a new one, retry", retry_after_s=5.0))
                    return
                if time.monotonic() > job.deadline:
                    self._finish(job, DeadlineExceeded("the request waited for a free replica past its deadline"))
                    return
        except asyncio.CancelledError:
            self._finish(job, job.stop_reason or Cancelled("cancelled"))
        except Exception:  # a bug fails one request, never the process
            if job.stop_reason is not None:
                self._finish(job, job.stop_reason)
            else:
                logger.exception("job %s failed unexpectedly in the Ray ingress", job.id)
                self._finish(job, FluxServiceError("internal error while generating; the log has the details"))
        finally:
            if held:
                self._waiting_jobs -= 1
            self._tasks.pop(job, None)
            self._responses.pop(job, None)

    async def _stream(self, job) -> None:
        from ray.serve.exceptions import RequestCancelledError

        payload = {"request": job.request, "deadline_wall": time.time() + (job.deadline - time.monotonic()),
                   "step_delay_s": self.step_delay_s}
        response = self.handle.options(stream=True, multiplexed_model_id=lora_set_id(self.engine, job)) \
            .generate.remote(payload)
        self._responses[job] = response
        try:
            async for name, data in response:
                if name == "running":
                    job.replica = data["replica"]
                    job.status, job.position, job.started_at = "running", None, time.time()
                    if self.journal is not None and job.kind == "job":
                        self.journal.started(job)
                    if self.metrics is not None:
                        self.metrics.queue_wait.observe(time.monotonic() - job.enqueued_mono)
                    job.publish("running", {"step": 0, "total": job.total,
                                            "queue_wait": round(time.monotonic() - job.enqueued_mono, 4),
                                            "replica": job.replica})
                elif name == "progress":
                    job.step, job.total = data["step"], data["total"]
                    job.publish("progress", data)
                elif name == "succeeded":
                    info = GenerationInfo(**data["info"])
                    seconds = info.timings.get("total_s", 0.0)
                    self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
                    if self.metrics is not None:
                        self.metrics.generation.observe(seconds)
                        self.replica_seconds.labels(data["replica"]).observe(seconds)
                    job.replica, job.info = data["replica"], info
                    self._count(job.replica, "succeeded")
                    if self.journal is not None and job.kind == "job":
                        self._finish(job, None, png=data["png"])  # to a file, as in the single-process worker
                    else:
                        job.png = data["png"]
                        self._finish(job, None)
                elif name == "error":
                    error = rebuild_error(data)
                    if isinstance(error, Cancelled) and job.stop_reason is not None:
                        error = job.stop_reason
                    job.replica = data.get("replica", job.replica)
                    self._count(job.replica, error.type)
                    self._finish(job, error)
        except (RequestCancelledError, asyncio.CancelledError):
            self._count(job.replica, "cancelled")
            self._finish(job, job.stop_reason or Cancelled("cancelled"))
        finally:
            self._responses.pop(job, None)

    def _count(self, replica: str | None, outcome: str) -> None:
        if self.metrics is not None:
            self.replica_requests.labels(replica or "none", outcome).inc()
