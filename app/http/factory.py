"""The HTTP service: ``create_app(settings)`` builds the FastAPI app around one engine and one worker.

Why a factory and no module-level app or settings: tests and benchmarks build apps with their own settings
(and share one engine between them); importing this module must not read the environment or load a model.
``uvicorn app.main:app`` (app/main.py) builds the app on first access with settings from the environment;
``flux-service serve`` calls ``create_app(Settings())`` itself.

Lifespan (FastAPI's replacement for ``on_event``): start-up opens the job store (``app/jobs/``; several
processes may share its folder, each running only the jobs it holds), loads the model and every task LoRA
(a bad configuration stops start-up with the engine's message naming the file), puts the jobs a previous run
did not finish back into the queue, starts the worker, and keeps taking over the jobs of processes that are
gone (``app/jobs/sharing.py``). Shutdown starts at the signal, not at the lifespan
(see ``app/jobs/shutdown.py``): refuse new work, answer queued direct requests 503, keep queued jobs on disk, let
the running image finish for ``shutdown_grace_s``, then let uvicorn close. Without a signal (tests, an
embedding server) the lifespan's end runs the same drain. A watchdog task stops the process the same way, with
exit status 70, if the worker thread dies. A configuration error found during start-up is one line on stderr
(``app/http/startup_errors.py``), not a traceback.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app.errors import install_error_handlers
from app.http import openapi
from app.http.allow import install_allow
from app.http.body_limit import BodyLimit
from app.http.host_guard import HostGuard, bound_beyond_loopback_note
from app.http.metrics import Metrics
from app.http.origin_guard import OriginGuard
from app.http.routes import generate, jobs, meta
from app.http.routes.docs import install_docs
from app.http.routes.page import install_page
from app.http.routes.trainings import install_trainings
from app.http.schemas import params_model
from app.http.security import ApiKeyGuard, require_api_key
from app.http.startup_errors import StartupErrors
from app.jobs import JobStore, pending_jobs
from app.jobs.sharing import StoreSync
from app.jobs.shutdown import SignalDrain, watch_worker
from app.jobs.worker import Worker
from pipelines.errors import ConfigError
from pipelines.settings import Settings, load_settings

logger = logging.getLogger(__name__)

DESCRIPTION = """FLUX.1 image generation with per-task LoRA adapters.

`POST /api/generate-image` returns PNG bytes; `POST /api/jobs` queues the same request and reports progress
(`GET /api/jobs/{id}/events`, server-sent events). Leave an optional field out for its default; never send
`null`. Errors are `{"error": {"type", "message", "param"}}`, on every status listed per route.

**Forms too.** Besides the JSON body listed below, both routes take the same fields as a multipart form
(`curl -F prompt=...`, browser `FormData`) or an urlencoded form, under the same rules: one value per field,
UTF-8 text, `true`/`false` (also `on`/`off`, `1`/`0`, `yes`/`no`) for booleans, integers written as integers,
an empty optional field means "not given", a list or object field as JSON text, no file parts.
"""


def create_app(settings: Settings | None = None, engine=None, backend=None) -> FastAPI:
    """Build the app. ``engine``: an already loaded ``FluxEngine`` (tests share one); None loads it at start-up.

    ``backend``: where generations run. None: this process (``FluxEngine`` + the ``Worker`` thread). Ray Serve
    (``app/ray_serve``) passes one with ``load_engine(settings)`` (a planning-only engine: validation, task
    list, no weights) and ``make_worker(engine, queue_size, metrics)`` (a worker that submits to Ray replicas),
    so both modes share every route, the page and the docs.

    Parameter limits (sizes, steps, prompt length) are enforced by ``engine.plan`` with the engine's own
    settings; they are this ``settings`` object unless a caller passes an engine built with other settings.
    """
    settings = settings if settings is not None else _settings_from_environment()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if app.state.worker is not None:
            # a second harness started this same app (e.g. schemathesis inside a TestClient): one app is one
            # service with one worker and one job store (whose folder is locked), so share the running ones
            yield
            return
        _ensure_log_output()
        # a typed error from here on stops start-up with one line on stderr (app/http/startup_errors.py)
        store = await asyncio.to_thread(JobStore.open, settings)
        try:
            eng = engine
            if eng is None:
                from pipelines.engine import FluxEngine

                load = (backend.load_engine if backend is not None else
                        functools.partial(FluxEngine.from_settings, serving=True))  # FLUX_COMPILE=auto: on
                eng = await asyncio.to_thread(load, settings)
            if eng.is_demo:
                logger.warning("serving the DEMO model (random weights, noise-like images); set FLUX_MODEL_PATH")
            await asyncio.to_thread(eng.warm_up)  # torch.compile: every expected size, before /ready says 200
            make_worker = backend.make_worker if backend is not None else Worker
            worker = make_worker(eng, settings.queue_size, metrics, journal=store)
            worker.resume(await asyncio.to_thread(pending_jobs, store, settings.request_timeout_s))
            worker.start()
        except BaseException:
            store.close()
            raise
        metrics.bind(worker, eng)
        app.state.engine, app.state.worker, app.state.jobs = eng, worker, store
        sync = StoreSync(store, worker, settings.request_timeout_s)
        sync.start()
        signals = SignalDrain(worker, settings.shutdown_grace_s)
        signals.install()
        watchdog = asyncio.get_running_loop().create_task(watch_worker(worker, signals))  # a dead worker: exit 70
        logger.info("ready: queue size %d, request timeout %gs, jobs in %s%s", settings.queue_size,
                    settings.request_timeout_s, store.data_dir, ", API key required" if settings.api_key else "")
        note = bound_beyond_loopback_note(settings.host, settings.allowed_hosts)
        if note:
            logger.info(note)
        try:
            yield
        finally:
            watchdog.cancel()
            await sync.stop()
            if not worker.draining:
                logger.info("shutting down: refusing new work, waiting up to %gs for the running image",
                            settings.shutdown_grace_s)
            await asyncio.to_thread(worker.drain, settings.shutdown_grace_s)
            signals.uninstall()
            app.state.engine = app.state.worker = app.state.jobs = None
            store.close()
            logger.info("shut down")

    # operation ids are the route functions' names, so generated clients get `generate_image`, `create_job`...
    app = FastAPI(title="flux-service", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name,
                  docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.engine = app.state.worker = app.state.jobs = None
    # the limits `engine.plan` enforces are the engine's settings: the request model (and so the schema) uses them
    app.state.params_model = params_model(engine.settings if engine is not None else settings)

    install_error_handlers(app)
    install_allow(app)  # 405: Allow lists every method of the path
    from app.http.access_log import quiet_health_checks  # only the factory needs it

    quiet_health_checks(not settings.log_health_checks)
    guarded = [Depends(require_api_key)]
    keyed = openapi.error_responses(401) if settings.api_key else {}  # 401 exists only with a key
    app.include_router(generate.router, dependencies=guarded, tags=["generate"], responses=keyed)
    app.include_router(jobs.router, dependencies=guarded, tags=["jobs"], responses=keyed)
    app.include_router(meta.api, dependencies=guarded, tags=["service"], responses=keyed)
    app.include_router(meta.router, tags=["service"])
    install_trainings(app, settings, guarded, keyed)  # POST /api/trainings ...; its supervisor wraps the lifespan
    install_docs(app)
    install_page(app)
    openapi.install(app, params_model=app.state.params_model, api_key_set=bool(settings.api_key))

    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes,
                       overrides={"/api/trainings": settings.max_training_upload_bytes})  # photo uploads
    app.add_middleware(ApiKeyGuard, api_key=settings.api_key)  # 401 before the body limit reads anything
    if settings.cors_origins:  # outermost, so even 413/401 answers carry the CORS headers
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"],
                           expose_headers=generate.RESULT_HEADERS + ["Location"])
    app.add_middleware(OriginGuard, allowed_origins=settings.cors_origins)  # 403 before any work
    # outermost: the Origin check compares Origin with a Host that must be one of ours (DNS rebinding: 400)
    app.add_middleware(HostGuard, allowed_hosts=settings.allowed_hosts, bound_host=settings.host)
    app.add_middleware(StartupErrors)  # lifespan only: a configuration error is one line, not a traceback
    return app


def _settings_from_environment() -> Settings:
    """The uvicorn entry points (``uvicorn app.main:app``, ``uvicorn --factory app.main:create_app``) read
    the environment here. A bad ``FLUX_*`` value prints one line naming the variable and exits with
    uvicorn's start-up failure code (3), instead of a pydantic traceback through uvicorn's loader."""
    try:
        return load_settings()
    except ConfigError as exc:
        print(f"error ({exc.type}): {exc.message}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None


def _ensure_log_output() -> None:
    """Under plain ``uvicorn app.main:app`` only uvicorn's own loggers have handlers, and our per-image
    log line (task, adapter, strength, seed...) would vanish. Give the root logger one when nobody did."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

