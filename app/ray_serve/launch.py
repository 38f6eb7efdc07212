"""Build the Serve application and run it: ``flux-service serve --ray`` and ``serve deploy``.

``build_app(args)`` is the application builder (``import_path: app.ray_serve:build_app`` in
deploy/serve_config.yaml); ``args`` may override ``replicas``, ``max_loras`` and ``cpus_per_replica``, and
everything else comes from the usual ``FLUX_*`` settings of the node that builds it. Replicas ask Ray for
one GPU each when the host has CUDA (``num_gpus=1``), otherwise ``FLUX_RAY_CPUS_PER_REPLICA`` CPUs.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

APP_NAME = "flux"


def build_app(args: dict):
    """The Serve application builder (Ray calls it with the config file's ``args``)."""
    from pipelines.settings import load_settings

    return _build(args, load_settings())


def _build(args: dict | None, settings, extend_app=None):
    from ray import serve

    from app.ray_serve.engine_deployment import _cuda, engine_deployment
    from app.ray_serve.ingress import FluxIngress

    args = dict(args or {})
    replicas = int(args.get("replicas", settings.ray_replicas))
    max_loras = int(args.get("max_loras", settings.ray_max_loras))
    cpus = float(args.get("cpus_per_replica", settings.ray_cpus_per_replica))
    gpu = settings.device != "cpu" and _cuda()
    actor = {"num_gpus": 1, "num_cpus": 1} if gpu else {"num_cpus": cpus}
    engine = serve.deployment(
        engine_deployment(max_loras), name="FluxEngine", num_replicas=replicas, max_ongoing_requests=1,
        max_queued_requests=settings.queue_size, ray_actor_options=actor,
        health_check_period_s=2, health_check_timeout_s=30,
    ).bind(settings)
    ingress = serve.deployment(FluxIngress, name="FluxIngress", num_replicas=1, max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0})
    return ingress.bind(engine, settings, extend_app)


def start(settings, replicas: int, *, num_cpus: int | None = None, blocking: bool = False, extend_app=None):
    """Start (or join, with ``RAY_ADDRESS``) Ray, start Serve's HTTP proxy on FLUX_HOST:FLUX_PORT and
    deploy the app; returns once every replica is ready. ``extend_app``: an importable ``callable(app) -> app``
    applied to the ingress's app (tests add their routes with it)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    started = time.perf_counter()
    serve.run(_build({"replicas": replicas}, settings, extend_app), name=APP_NAME, route_prefix="/",
              blocking=blocking)
    logger.info("Ray Serve: %d engine replica(s) ready in %.1fs on http://%s:%d", replicas,
                time.perf_counter() - started, settings.host, settings.port)


def serve_forever(settings, replicas: int) -> None:
    """``flux-service serve --ray``: run until Ctrl-C, then shut Serve down (drains the ingress)."""
    from ray import serve

    start(settings, replicas)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
