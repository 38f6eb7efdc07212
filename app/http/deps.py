"""What a route needs from the running app (engine, worker, jobs), or a 503 while there is none.

Why not globals: ``create_app`` may build several apps in one process (tests, benchmarks); each keeps its
engine and worker on its own ``app.state``, set by the lifespan.
"""

from __future__ import annotations

from fastapi import Request

from app.errors import NotReady


def engine_of(request: Request):
    engine = getattr(request.app.state, "engine", None)
    if engine is None:
        raise NotReady("the model is not loaded yet; retry when GET /ready answers 200")
    return engine


def worker_of(request: Request):
    worker = getattr(request.app.state, "worker", None)
    if worker is None:
        raise NotReady("the model is not loaded yet; retry when GET /ready answers 200")
    return worker


def jobs_of(request: Request):
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        raise NotReady("the job store is not open yet; retry when GET /ready answers 200")
    return jobs
