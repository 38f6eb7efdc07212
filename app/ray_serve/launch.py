"""Build the Serve application and run it: ``flux-service serve --ray`` and ``serve deploy``.

``build_app(args)`` is the application builder (``import_path: app.ray_serve:build_app`` in
deploy/serve_config.yaml); ``args`` may override ``replicas``, ``max_loras`` and ``cpus_per_replica``, and
everything else comes from the usual ``FLUX_*`` settings of the node that builds it. Replicas ask Ray for
``FLUX_RAY_GPUS_PER_REPLICA`` GPUs each (default 1; 0.5 shares a GPU between two replicas, each holding a
whole model) when the host has CUDA, otherwise ``FLUX_RAY_CPUS_PER_REPLICA`` CPUs.

Why a start-up check: Ray does not refuse replicas it cannot place; they wait for a GPU forever and the
service never becomes ready. ``flux-service serve --ray`` therefore compares replicas x GPUs per replica
with the GPUs of the cluster it joined and stops with a ``ConfigError`` naming both numbers.
(``serve deploy`` / KubeRay builds skip the check: an autoscaling cluster adds GPU nodes on demand.)
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

APP_NAME = "flux"


def build_app(args: dict):
    """The Serve application builder (Ray calls it with the config file's ``args``)."""
    from pipelines.settings import load_settings

    return build_application(args, load_settings())


def engine_actor_options(settings, replicas: int, cpus: float, *, cuda: bool, cluster_gpus: float | None) -> dict:
    """What each engine replica asks Ray for. On CUDA ``FLUX_RAY_GPUS_PER_REPLICA`` GPUs (and one CPU); more
    replicas than the cluster's GPUs can hold (``cluster_gpus``; None: not checked) is a ``ConfigError``."""
    from pipelines.errors import ConfigError

    if not cuda:
        return {"num_cpus": cpus}
    per = settings.ray_gpus_per_replica
    if cluster_gpus is not None and replicas * per > cluster_gpus + 1e-9:
        raise ConfigError(
            f"--replicas {replicas} with FLUX_RAY_GPUS_PER_REPLICA={per:g} needs {replicas * per:g} GPU(s), but the "
            f"Ray cluster has {cluster_gpus:g}: the replicas that do not fit would wait for a GPU forever. Use "
            f"--replicas {max(1, int(cluster_gpus // per))} (FLUX_RAY_REPLICAS), or share GPUs with "
            "FLUX_RAY_GPUS_PER_REPLICA=0.5 if one GPU holds two models (bench/flux_memory.py)")
    return {"num_gpus": per, "num_cpus": 1}


def build_application(args: dict | None, settings, extend_app=None, cluster_gpus: float | None = None):
    """The Serve application (ingress + engine deployment) for ``settings``; ``cluster_gpus``: the GPUs of the
    cluster the replicas must fit on (None: not checked)."""
    from ray import serve

    from app.ray_serve.engine_deployment import _cuda, engine_deployment
    from app.ray_serve.ingress import FluxIngress

    args = dict(args or {})
    replicas = int(args.get("replicas", settings.ray_replicas))
    max_loras = int(args.get("max_loras", settings.ray_max_loras))
    cpus = float(args.get("cpus_per_replica", settings.ray_cpus_per_replica))
    gpu = settings.device != "cpu" and _cuda()
    actor = engine_actor_options(settings, replicas, cpus, cuda=gpu, cluster_gpus=cluster_gpus)
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
    # checked before Serve starts: more replicas than GPUs is a start-up error, not replicas waiting forever
    application = build_application({"replicas": replicas}, settings, extend_app,
                         cluster_gpus=float(ray.cluster_resources().get("GPU", 0.0)))
    serve.start(http_options={"host": settings.host, "port": settings.port})
    started = time.perf_counter()
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=blocking)
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
