"""One real local Ray cluster + Ray Serve app (2 CPU engine replicas) per test module that asks for it.

Why in-process: ``ray.init`` + ``serve.run`` from the test process is the lean way (one start per module,
no dashboard, 2 CPUs); the app then serves real HTTP on a free port through Ray's proxy.
"""

from __future__ import annotations

import socket
import time

from tests.http_support import TEST_TASKS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RayCluster:
    def __init__(self, replicas: int = 2, **overrides) -> None:
        import ray

        from app.ray_serve.launch import start
        from tests.conftest import make_settings
        from tests.hooks import hooked

        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = {"tasks_file": TEST_TASKS, "queue_size": 8, "request_timeout_s": 120,
                    "host": "127.0.0.1", "port": self.port, "ray_cpus_per_replica": 0.5, "ray_max_loras": 1}
        base.update(overrides)
        self.settings = make_settings(**base)
        started = time.perf_counter()
        # 2 logical CPUs: the two replicas ask 0.5 each, Serve's controller and proxy ask none
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
        start(self.settings, replicas, extend_app=hooked)  # + the test routes (tests/hooks.py)
        self.start_s = time.perf_counter() - started

    def engine_handle(self):
        from ray import serve

        return serve.get_deployment_handle("FluxEngine", app_name="flux")

    def replica_ids(self) -> list[str]:
        """The engine replicas' ids (= actor names in namespace "serve"), as X-Replica reports them."""
        import ray

        return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["namespace"] == "serve" and a["name"].startswith("SERVE_REPLICA::flux#FluxEngine#")]

    def engine_status(self) -> str:
        from ray import serve

        return str(serve.status().applications["flux"].deployments["FluxEngine"].status.value)

    def stop(self) -> None:
        import ray
        from ray import serve

        try:
            serve.shutdown()
        finally:
            ray.shutdown()
