"""The engine deployment: one ``FluxEngine`` per Ray Serve replica, one request at a time, LoRA-aware.

Why these settings: a replica owns one GPU (one CPU budget on CPU) and one resident pipeline, which is not
re-entrant, so ``max_ongoing_requests=1``; what waits beyond that waits in Ray's queue, bounded by
``max_queued_requests`` (= ``FLUX_QUEUE_SIZE``), whose overflow (``BackPressureError``) the ingress answers
with our 503 + ``Retry-After`` envelope. ``@serve.multiplexed`` lives here, not on the ingress (Ray is
moving to forbid it there): the model id of a request is its LoRA set (every LoRA file it uses, "" for the
base model), so Ray routes it to a replica that served that set recently; which files stay resident is the
replica's own LRU, per file (``lora_lru.py``: at most ``FLUX_RAY_MAX_LORAS``, least recently used unloaded).

``generate`` is a streaming method: it yields ``("running", {replica})``, then ``("progress", {step,
total})`` per denoising step (and for jobs ``("preview", {...})`` every few steps), then one final
``("succeeded", {png, info})`` or ``("error", {...})``. Typed errors travel as plain data (class name,
message, param) and are rebuilt in the ingress, so the client gets the same envelope as from the
single-process service. Cancelling the response (``DeploymentResponseGenerator.cancel()``: DELETE, client
gone, deadline, the end of a shutdown grace) raises ``CancelledError`` here; the denoising thread is then
stopped at its next step and awaited, so a replica never runs two generations at once.

Previews: made for every job (``payload["previews"]``), not only while a reader watches as in one process,
because a reader connects after the job has already been sent here and there is no way to tell a running
replica; each costs about 1 ms (ten per image, docs/benchmarks.md), noise next to a denoising step.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from ray import serve

from app.ray_serve.logs import route_to_serve_logs
from pipelines.errors import Cancelled, DeadlineExceeded, FluxServiceError
from pipelines.preview import every_n_steps

logger = logging.getLogger(__name__)


def error_data(exc: FluxServiceError) -> dict:
    return {"cls": type(exc).__name__, "type": exc.type, "message": exc.message, "param": exc.param,
            "retry_after_s": getattr(exc, "retry_after_s", None)}


def engine_deployment(max_loras: int):
    """The deployment class; built by a function because ``max_num_models_per_replica`` is fixed when
    ``@serve.multiplexed`` decorates the method, and it is a setting."""

    class FluxEngineReplica:
        def __init__(self, settings) -> None:
            from app.ray_serve.lora_lru import LoraLru
            from pipelines.engine import FluxEngine

            route_to_serve_logs()  # the per-image line and our warnings in the replica log (and the console)

            if settings.device in ("auto", "cpu") and not _cuda():
                import torch

                threads = max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1") or 1)))
                torch.set_num_threads(threads)  # one replica = its num_cpus, never the whole host
            self.engine = FluxEngine.from_settings(settings, serving=True)
            # torch.compile: the expected sizes compile here, before Serve routes a request to this replica;
            # any other size runs eagerly (pipelines/compile.py)
            self.engine.warm_up()
            # Every task LoRA was read and checked at construction (a bad file stops start-up, as in one
            # process); from now on the replica's LRU decides which ones stay resident (lora_lru.py).
            for adapter in self.engine.resident_adapters():
                self.engine.unload_adapter(adapter.file)
            self.loras = LoraLru(self.engine, max_loras)
            self.replica = serve.get_replica_context().replica_id.to_full_id_str()
            self.images = 0
            logger.info("engine replica %s ready (%s)", self.replica, self.engine.device)

        @serve.multiplexed(max_num_models_per_replica=max_loras)
        async def lora_set(self, model_id: str) -> str:
            """Tells Ray this replica serves ``model_id`` (routing); the loading is ``self.loras``'s, per file."""
            return model_id

        async def describe(self) -> dict:
            return {"replica": self.replica, "pid": os.getpid(), "images": self.images,
                    "resident_loras": [str(a.file) for a in self.engine.resident_adapters()]}

        async def generate(self, payload: dict):
            from app.ray_serve.lora_lru import files_of

            lora = serve.get_multiplexed_model_id()
            yield ("running", {"replica": self.replica})
            loop = asyncio.get_running_loop()
            events: asyncio.Queue = asyncio.Queue()
            stop = threading.Event()
            deadline_wall = payload["deadline_wall"]
            step_delay = float(payload.get("step_delay_s") or 0.0)

            def progress(step: int, total: int) -> None:
                if step and step_delay:
                    end = time.monotonic() + step_delay
                    while time.monotonic() < end and not stop.is_set():
                        time.sleep(0.02)
                if stop.is_set():
                    raise Cancelled("cancelled through Ray (DELETE, client gone or deadline)")
                if time.time() > deadline_wall:
                    raise DeadlineExceeded(f"stopped at step {step}/{total}: the request ran past its deadline")
                loop.call_soon_threadsafe(events.put_nowait, ("progress", {"step": step, "total": total}))

            previewer = _Previews(loop, events) if payload.get("previews") else None

            def run() -> tuple[str, dict]:
                if time.time() > deadline_wall:
                    return "error", error_data(DeadlineExceeded("the request waited in the queue past its deadline"))
                try:
                    self.loras.use(files_of(lora))  # the engine is idle here: load the set, unload beyond the bound
                    result = self.engine.generate(payload["request"], progress=progress, preview=previewer)
                    return "succeeded", {"png": result.png_bytes(), "info": result.info.to_dict()}
                except FluxServiceError as exc:
                    return "error", error_data(exc)
                except Exception:  # a bug fails one request, never the process
                    logger.exception("replica %s: generation failed unexpectedly", self.replica)
                    return "error", error_data(FluxServiceError("internal error while generating; the replica "
                                                                "log has the details"))

            try:
                if lora:
                    await self.lora_set(lora)
                work = loop.run_in_executor(None, run)
                while True:
                    getter = asyncio.ensure_future(events.get())
                    done, _ = await asyncio.wait({getter, work}, return_when=asyncio.FIRST_COMPLETED)
                    if getter in done:
                        yield getter.result()
                        continue
                    getter.cancel()
                    break
                while not events.empty():
                    yield events.get_nowait()
                status, data = work.result()
            except asyncio.CancelledError:
                stop.set()
                if "work" in locals():
                    await asyncio.shield(work)  # the GPU is free again before the next request runs
                raise
            if status == "succeeded":
                self.images += 1
            data["replica"] = self.replica
            yield (status, data)

    return FluxEngineReplica


class _Previews:
    """The engine's ``Previewer`` in a replica: every few steps, into the response stream."""

    def __init__(self, loop, events) -> None:
        self.loop, self.events = loop, events

    def wants(self, step: int, total: int) -> bool:
        return step % every_n_steps(total) == 0

    def show(self, preview) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, ("preview", preview.to_dict()))


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False
