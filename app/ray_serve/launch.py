"""Build the Serve application and start it: ``serve deploy`` (``build_app``) and ``flux-service serve --ray``.

``build_app(args)`` is the application builder (``import_path: app.ray_serve:build_app`` in
deploy/serve_config.yaml); ``args`` may override ``replicas``, ``max_loras``, ``cpus_per_replica`` and
``ingress_replicas`` (default 1; deploy/serve_config.yaml runs 2, so a redeploy always leaves one serving), and
everything else comes from the usual ``FLUX_*`` settings of the node that builds it. Replicas ask Ray for
``FLUX_RAY_GPUS_PER_REPLICA`` GPUs each (default 1; 0.5 shares a GPU between two replicas, each holding a
whole model) when the host has CUDA, otherwise ``FLUX_RAY_CPUS_PER_REPLICA`` CPUs.

Why a start-up check: Ray does not refuse replicas it cannot place; they wait for a GPU forever and the
service never becomes ready. ``flux-service serve --ray`` therefore compares replicas x GPUs per replica
with the GPUs of the cluster it runs on and stops with a ``ConfigError`` naming both numbers.
(``serve deploy`` / KubeRay builds skip the check: an autoscaling cluster adds GPU nodes on demand.)

Shutdown timing: Ray Serve force-kills a replica ``graceful_shutdown_timeout_s`` after it asked it to stop
(a rolling update, ``serve.delete``). Both deployments get ``FLUX_SHUTDOWN_GRACE_S`` plus ``STOP_MARGIN_S``:
an engine replica finishes the image it is making, an ingress runs its drain (the running image gets the
grace, as under SIGTERM in one process) before it goes.

``connect`` starts Ray for ``flux-service serve --ray``: a private local instance unless ``RAY_ADDRESS`` says
which cluster to join (Ray's own ``ray.init()`` would join any cluster ``ray start`` left on this host, and
the old shutdown then removed that cluster's applications too).
"""

from __future__ import annotations

import logging
import os
import time

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

APP_NAME = "flux"
INGRESS_NAME = "FluxIngress"
#: Ray's resource that only the head node has (Ray schedules its own singletons on it this way)
HEAD_NODE = "node:__internal_head__"
#: seconds beyond FLUX_SHUTDOWN_GRACE_S that Ray Serve gives a stopping replica before it kills it
STOP_MARGIN_S = 15.0
TOKEN_HINT = ("if the cluster uses token authentication (Ray 2.60 turns it on when ~/.ray/auth_token exists where "
              "`ray start` runs), set RAY_AUTH_MODE=token here and make the cluster's token available "
              "(~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH); see docs/deploy.md")


def build_app(args: dict):
    """The Serve application builder (Ray calls it with the config file's ``args``)."""
    from pipelines.settings import load_settings

    return build_application(args, load_settings())


def engine_actor_options(settings, replicas: int, cpus: float, *, cuda: bool, cluster_gpus: float | None) -> dict:
    """What each engine replica asks Ray for. On CUDA ``FLUX_RAY_GPUS_PER_REPLICA`` GPUs (and one CPU); more
    replicas than the cluster's GPUs can hold (``cluster_gpus``; None: not checked) is a ``ConfigError``."""
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
    ingresses = int(args.get("ingress_replicas", 1))
    gpu = settings.device != "cpu" and _cuda()
    actor = engine_actor_options(settings, replicas, cpus, cuda=gpu, cluster_gpus=cluster_gpus)
    stop_s = settings.shutdown_grace_s + STOP_MARGIN_S
    engine = serve.deployment(
        engine_deployment(max_loras), name="FluxEngine", num_replicas=replicas, max_ongoing_requests=1,
        max_queued_requests=settings.queue_size, ray_actor_options=actor,
        health_check_period_s=2, health_check_timeout_s=30, graceful_shutdown_timeout_s=stop_s,
        logging_config={"log_level": "INFO", "enable_access_log": False},  # no "CALL generate OK": the ingress logs
    ).bind(settings)
    # on the head node: every ingress, and the next one of a redeploy, opens the same job store (SQLite in WAL
    # mode, which works only among processes of one host; app/jobs/owners.py)
    ingress = serve.deployment(FluxIngress, name=INGRESS_NAME, num_replicas=ingresses, max_ongoing_requests=1000,
                               ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE: 0.001}},
                               graceful_shutdown_timeout_s=stop_s, logging_config={"log_level": "INFO"})
    return ingress.bind(engine, settings, extend_app)


def connect(*, num_cpus: int | None = None, setup_hook: str | None = None) -> bool:
    """``ray.init`` for ``flux-service serve --ray``; True when it started a private instance (ours to stop).

    ``setup_hook``: an importable function every Ray worker of ours runs first (the CLI passes its console
    quieting, so replicas print no loading bars or library notices)."""
    import ray

    address = os.environ.get("RAY_ADDRESS") or None
    runtime_env = {"worker_process_setup_hook": setup_hook} if setup_hook else None
    try:
        ray.init(address=address or "local", num_cpus=None if address else num_cpus, include_dashboard=False,
                 log_to_driver=True, logging_level=logging.WARNING, runtime_env=runtime_env)
    except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, RuntimeError...
        if address is None:
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"cannot join the Ray cluster at RAY_ADDRESS={address} ({type(exc).__name__}: {first}); "
                          f"{TOKEN_HINT}") from None
    if address:
        logger.info("Ray: joined the cluster at %s (RAY_ADDRESS); on exit only the application %r is removed",
                    address, APP_NAME)
    else:
        logger.info("Ray: started a private local instance (set RAY_ADDRESS to join a cluster instead)")
    return address is None


def start(settings, replicas: int, *, num_cpus: int | None = None, blocking: bool = False, extend_app=None):
    """Start (or join, with ``RAY_ADDRESS``) Ray unless a test already did, start Serve's HTTP proxy on
    FLUX_HOST:FLUX_PORT and deploy the app; returns once every replica is ready. ``extend_app``: an importable
    ``callable(app) -> app`` applied to the ingress's app (tests add their routes with it)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        connect(num_cpus=num_cpus)
    # Serve's controller and proxies say only what goes wrong; our deployments log at INFO (the per-image line)
    # checked before Serve starts: more replicas than GPUs is a start-up error, not replicas waiting forever
    application = build_application({"replicas": replicas}, settings, extend_app,
                                     cluster_gpus=float(ray.cluster_resources().get("GPU", 0.0)))
    serve.start(http_options={"host": settings.host, "port": settings.port}, logging_config={"log_level": "WARNING"})
    started = time.perf_counter()
    serve.run(application, name=APP_NAME, route_prefix="/", blocking=blocking)
    where = (f"http://{settings.host}:{settings.port}" if not os.environ.get("RAY_ADDRESS") else
             "the cluster's Serve HTTP proxy (FLUX_HOST/FLUX_PORT apply only where Serve was not running yet)")
    logger.info("Ray Serve: %d engine replica(s) ready in %.1fs on %s", replicas, time.perf_counter() - started,
                where)
