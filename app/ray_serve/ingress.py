"""The ingress deployment: ``create_app`` itself, with generations sent to the engine deployment.

The FastAPI app is built inside the replica (``__serve_build_asgi_app__``), so what Ray ships between
processes is only a handle and the settings, and the app's lifespan (start-up, drain) runs as it does under
uvicorn. No ``@serve.multiplexed`` here: it belongs on the engine deployment.
"""

from __future__ import annotations

from ray import serve


class RayBackend:
    """What ``create_app(backend=...)`` asks: a planning engine and a worker that submits to Ray."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def load_engine(self, settings):
        from .planning import planning_engine

        return planning_engine(settings)

    def make_worker(self, engine, queue_size: int, metrics, journal=None):
        from .ray_worker import RayWorker

        return RayWorker(self.handle, engine, queue_size, metrics, journal=journal)


@serve.ingress()
class FluxIngress:
    def __init__(self, engine_handle, settings) -> None:
        self._handle = engine_handle
        self._settings = settings

    def __serve_build_asgi_app__(self):
        from app.main import create_app

        return create_app(self._settings, backend=RayBackend(self._handle))
