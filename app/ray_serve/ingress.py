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
        from app.ray_serve.planning import planning_engine

        return planning_engine(settings)

    def make_worker(self, engine, queue_size: int, metrics, journal=None):
        from app.ray_serve.ray_worker import RayWorker

        return RayWorker(self.handle, engine, queue_size, metrics, journal=journal)


@serve.ingress()
class FluxIngress:
    def __init__(self, engine_handle, settings, extend_app=None) -> None:
        self._handle = engine_handle
        self._settings = settings
        #: optional ``callable(app) -> app`` applied to the built app (the tests add their routes this way)
        self._extend_app = extend_app

    def __serve_build_asgi_app__(self):
        from app.http.factory import create_app

        app = create_app(self._settings, backend=RayBackend(self._handle))
        return self._extend_app(app) if self._extend_app is not None else app
