"""The ingress deployment: ``create_app`` itself, with generations sent to the engine deployment.

The FastAPI app is built inside the replica (``__serve_build_asgi_app__``), so what Ray ships between
processes is only a handle and the settings, and the app's lifespan (start-up, drain) runs as it does under
uvicorn. No ``@serve.multiplexed`` here: it belongs on the engine deployment.

``drain`` / ``hurry`` (called through a handle by ``flux-service serve --ray`` at SIGTERM) run the app's
shutdown drain while Ray's proxy and the engine replicas are still up, so the running image can finish and
its answer get through before anything is stopped (``lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import time

from ray import serve


class RayBackend:
    """What ``create_app(backend=...)`` asks: a planning engine and a worker that submits to Ray."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def load_engine(self, settings):
        from app.ray_serve.planning import planning_engine

        return planning_engine(settings)

    def make_worker(self, engine, queue_size: int, metrics, journal=None):
        from app.ray_serve.ray_worker import RayWorker

        return RayWorker(self.handle, engine, queue_size, metrics, journal=journal)


@serve.ingress()
class FluxIngress:
    def __init__(self, engine_handle, settings, extend_app=None) -> None:
        from app.ray_serve.logs import route_to_serve_logs

        route_to_serve_logs()
        self._app = None
        self._handle = engine_handle
        self._settings = settings
        #: optional ``callable(app) -> app`` applied to the built app (the tests add their routes this way)
        self._extend_app = extend_app

    def __serve_build_asgi_app__(self):
        from app.http.factory import create_app

        app = create_app(self._settings, backend=RayBackend(self._handle))
        self._app = self._extend_app(app) if self._extend_app is not None else app
        return self._app

    async def drain(self, grace_s: float, wait_s: float) -> dict:
        """Shutdown, as SIGTERM does in one process: no new work, queued jobs kept, running images get
        ``grace_s``; returns when nothing runs any more (or after ``wait_s``)."""
        worker = self._app.state.worker if self._app is not None else None
        if worker is not None:
            worker.begin_drain(grace_s)
            end = time.monotonic() + wait_s
            while not worker.idle() and time.monotonic() < end:
                await asyncio.sleep(0.1)
        return await self.drain_state()

    async def hurry(self) -> None:
        """A second signal: stop the running images at their next step."""
        worker = self._app.state.worker if self._app is not None else None
        if worker is not None:
            worker.hurry()

    async def drain_state(self) -> dict:
        worker = self._app.state.worker if self._app is not None else None
        if worker is None:
            return {"idle": True, "running": False}
        return {"idle": worker.idle(), "running": worker.busy()}
