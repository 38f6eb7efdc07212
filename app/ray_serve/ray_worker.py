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
  (Ray Serve is already starting a new replica); a job is retried once on a live replica (its event stream
  gets ``queued`` again, then ``running`` and steps from 1), then fails with that 503 error in its state.

Shutdown (``begin_drain``: ``flux-service serve --ray`` at SIGTERM/Ctrl-C, or the lifespan when Ray Serve
stops this ingress, e.g. in a rolling update) follows the single-process worker: no new work (503
``shutting_down``); queued direct requests 503 at once; queued jobs kept in the job store and let go, so the
next ingress (or the next start) runs them; running images finish within ``FLUX_SHUTDOWN_GRACE_S``, then are
stopped at their next step (a job goes back to queued, a direct request gets 503).
The job store is shared by every ingress on the data folder (``app/jobs/owners.py``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from prometheus_client import Counter, Histogram

from app.errors import RetryLater, ShuttingDown
from app.jobs.remote import RemoteJob
from app.jobs.sharing import cancel_elsewhere
from app.jobs.worker import Worker
from app.ray_serve.lora_lru import lora_set_id
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
        self.resume(resumed)

    def resume(self, jobs: list) -> None:
        """Jobs read back from the job store (at start-up, or taken over from a gone ingress later): they go to
        the replicas at once, beyond ``queue_size`` (they were accepted); before ``start``, once it ran."""
        if self._loop is None:
            self._resumed.extend(jobs)
            return
        for job in jobs:
            self._tasks[job] = self._loop.create_task(self._drive(job))

    def depth(self) -> int:
        return sum(1 for job in self._tasks if job.status == "queued")

    def busy(self) -> bool:
        return any(job.status == "running" for job in self._tasks)

    def idle(self) -> bool:
        return not self._tasks

    def begin_drain(self, grace_s: float) -> None:
        """Shutdown starts (event-loop side): see the module docstring. Returns at once."""
        if self._drain_deadline is not None:
            return
        self._accepting = False
        self._drain_deadline = time.monotonic() + grace_s
        kept = refused = 0
        for job in list(self._tasks):
            if job.status != "queued" or job.done:
                continue
            if job.kind == "job" and self.journal is not None:
                kept += 1
                self._keep(job, "the service is shutting down; this job is kept and runs after the next start")
                response = self._responses.get(job)
                if response is not None:
                    response.cancel()
                self._tasks[job].cancel()
            else:
                refused += 1
                self.cancel(job, ShuttingDown("the service is shutting down and did not start this request; send it "
                                              "again (to another instance, or after the restart)"))
        running = sum(1 for job in self._tasks if job.status == "running")
        logger.info("shutdown: %d queued request(s) refused, %d queued job(s) kept for the next start; %s", refused,
                    kept, f"waiting up to {grace_s:g}s for {running} running image(s)" if running else "nothing running")
        self._grace_timer = self._loop.call_later(grace_s, self.hurry)

    def hurry(self) -> None:
        """The grace is over (or a second signal): stop the running images at their next step."""
        for job in list(self._tasks):
            if not job.done and job.stop_reason is None:
                self.cancel(job, ShuttingDown(f"stopped at step {job.step}/{job.total}: the service is shutting down "
                                              "and its grace period ran out"))

    def join(self, timeout: float) -> bool:
        """Wait (from a thread) until no job is driven any more; True when none is."""
        end = time.monotonic() + timeout
        while self._tasks and time.monotonic() < end:
            time.sleep(0.05)
        return not self._tasks

    def drain(self, grace_s: float) -> None:
        """Shutdown from the lifespan (a thread): ``begin_drain`` unless already begun, then wait for the stop."""
        if self._loop is None or self._loop.is_closed():
            return
        begun = threading.Event()

        def begin() -> None:
            try:
                self.begin_drain(grace_s)
            finally:
                begun.set()

        self._loop.call_soon_threadsafe(begin)
        begun.wait(5.0)
        remaining = max(0.0, (self._drain_deadline or time.monotonic() + grace_s) - time.monotonic())
        if not self.join(remaining + 3.0):  # the step running when the grace ended, and its answer
            logger.warning("shutdown: %d job(s) still with a replica 3s after the grace; exiting anyway",
                           len(self._tasks))

    # ------------------------------------------------------------------ event-loop side
    def submit(self, job) -> None:
        if not self._accepting or self._loop is None:
            raise ShuttingDown("the service is shutting down and takes no new work; send it again (to another "
                               "instance, or after the restart)")
        if job.kind == "job" and self._waiting_jobs >= self.queue_size:
            raise RetryLater(f"the queue is full ({self.queue_size} jobs waiting for a replica); retry in about "
                             f"{self._mean_s:.0f}s", retry_after_s=min(max(self._mean_s, 1.0), 300.0))
        if self.journal is not None and job.kind == "job":
            self.journal.accepted(job)  # on disk before the client hears 202, as in the single-process worker
        job.position = self.depth() + 1
        job.publish("queued", {"position": job.position})
        self._tasks[job] = self._loop.create_task(self._drive(job))

    def cancel(self, job, reason: FluxServiceError) -> None:
        if isinstance(job, RemoteJob):  # another ingress holds it: asked through the job store
            cancel_elsewhere(self.journal, job, reason)
            return
        if job.done or job.suspended:
            return
        if job.stop_reason is None:
            job.stop_reason = reason
        response = self._responses.get(job)
        if response is not None:
            response.cancel()
        elif job in self._tasks:  # between two tries (backpressure wait): nothing runs on a replica
            self._tasks[job].cancel()

    def _keep(self, job, message: str) -> None:
        """A job this ingress will not finish (shutting down): back to queued in the store, and let go."""
        if job.status == "running" and self.journal is not None:
            self.journal.interrupted(job)
        job.suspend(message)
        self.journal.released(job)

    def _stopped(self, job, reason: FluxServiceError) -> None:
        """A job stopped on purpose: kept for the next owner if the shutdown grace stopped it, else finished."""
        if isinstance(reason, ShuttingDown) and job.kind == "job" and self.journal is not None and not job.done:
            logger.info("shutdown: job %s stopped at the grace; it runs again after the next start", job.id)
            self._keep(job, f"{reason.message}; this job is kept and runs again after the next start")
            return
        self._finish(job, reason)

    def _finish(self, job, error, png: bytes | None = None) -> None:
        if job.suspended:  # kept in the store for the next owner: it is not over
            return
        super()._finish(job, error, png=png)

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
                        job.status, job.step, job.replica, job.preview = "queued", 0, None, None
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
            self._stopped(job, job.stop_reason or Cancelled("cancelled"))
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
                   "step_delay_s": self.step_delay_s, "previews": job.kind == "job"}
        response = self.handle.options(stream=True, multiplexed_model_id=lora_set_id(self.engine, job)) \
            .generate.remote(payload)
        self._responses[job] = response
        try:
            async for name, data in response:
                if name == "running":
                    job.replica = data["replica"]
                    job.status, job.position, job.started_at, job.step = "running", None, time.time(), 0
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
                    if self.journal is not None and job.kind == "job":
                        self.journal.progressed(job)  # for the other ingresses sharing the store
                elif name == "preview":  # as JobPreviewer.show does in one process: the newest only
                    job.preview = data
                    job.publish("preview", {"step": data["step"]})
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
                    job.replica = data.get("replica", job.replica)
                    if isinstance(error, Cancelled) and job.stop_reason is not None:
                        self._count(job.replica, "cancelled")
                        self._stopped(job, job.stop_reason)
                    else:
                        self._count(job.replica, error.type)
                        self._finish(job, error)
        except (RequestCancelledError, asyncio.CancelledError):
            self._count(job.replica, "cancelled")
            self._stopped(job, job.stop_reason or Cancelled("cancelled"))
        finally:
            self._responses.pop(job, None)

    def _count(self, replica: str | None, outcome: str) -> None:
        if self.metrics is not None:
            self.replica_requests.labels(replica or "none", outcome).inc()
