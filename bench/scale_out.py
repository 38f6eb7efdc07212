"""Images per second with 1 and 2 Ray Serve engine replicas, side by side in one run, and p50/p99 latency.

Not a test: prints a markdown table for docs/benchmarks.md. Run from the repository root (needs the 'ray'
extra):

    .venv/bin/python bench/scale_out.py                   # demo model, 128x128, 4 steps, 2 rounds
    .venv/bin/python bench/scale_out.py --size 256 --steps 8 --rounds 3

One local Ray instance (``num_cpus`` = the host's cores, no dashboard), the real app (ingress =
``create_app``, HTTP through Ray's proxy). The same app is scaled between 1 and 2 engine replicas
(``serve.run`` again with the other count) round after round, ABAB, so drift in machine load hits both
alike; each replica has one CPU and one torch thread. Per round and replica count: closed-loop clients at
concurrency 1, 4 and 16 on base-model requests with fixed seeds. The ratio is images/s at 16 clients.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stats import pct, run_clients  # noqa: E402 - after the path insert


def closed_loop(url: str, clients: int, total: int, size: int, steps: int) -> tuple[float, list[float], dict]:
    """``clients`` threads each send requests back to back until ``total`` are done."""
    latencies: list[float] = []
    codes: dict[int, int] = {}
    lock = threading.Lock()
    counter = iter(range(total))

    def run():
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = c.post(url + "/api/generate-image", data={"prompt": "a lighthouse at dusk", "seed": str(i),
                                                              "width": str(size), "height": str(size),
                                                              "num_inference_steps": str(steps)})
                with lock:
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
                    if r.status_code == 200:
                        latencies.append(time.perf_counter() - t)

    return run_clients(clients, run), latencies, codes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--images", type=int, default=24, help="images per (round, replica count, concurrency)")
    a = ap.parse_args()

    import ray
    from ray import serve

    from app.ray_serve.launch import APP_NAME, build_application
    from pipelines.settings import Settings

    port = 18000 + os.getpid() % 1000
    settings = Settings(_env_file=None, min_size=16, queue_size=64, host="127.0.0.1", port=port,
                        ray_cpus_per_replica=1.0, request_timeout_s=600)
    cores = os.cpu_count() or 2
    ray.init(address="local", num_cpus=cores, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    load = os.getloadavg()[0]
    results: dict[tuple[int, int], list[tuple[float, list[float]]]] = {}
    try:
        for rnd in range(a.rounds):
            for replicas in (1, 2):
                t = time.perf_counter()
                serve.run(build_application({"replicas": replicas}, settings), name=APP_NAME, route_prefix="/")
                print(f"round {rnd + 1}: {replicas} replica(s) ready in {time.perf_counter() - t:.1f}s",
                      file=sys.stderr)
                closed_loop(url, replicas, 2 * replicas, a.size, a.steps)  # warm-up: every replica once
                for clients in (1, 4, 16):
                    n = a.images if clients > 1 else max(4, a.images // 3)
                    elapsed, lat, codes = closed_loop(url, clients, n, a.size, a.steps)
                    if set(codes) != {200}:
                        print(f"  statuses {codes}", file=sys.stderr)
                    results.setdefault((replicas, clients), []).append((len(lat) / elapsed, lat))
                    print(f"  {clients:>2} clients: {len(lat) / elapsed:.2f} img/s", file=sys.stderr)
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\n{a.size}x{a.size}, {a.steps} steps, demo model, {a.rounds} rounds ABAB, {cores} cores, "
          f"1 CPU + 1 torch thread per replica, load average at start {load:.1f}\n")
    print("| replicas | clients | images/s (mean of rounds) | p50 s | p99 s |")
    print("|---:|---:|---:|---:|---:|")
    rate = {}
    for (replicas, clients), runs in sorted(results.items()):
        rate[(replicas, clients)] = statistics.mean(r for r, _ in runs)
        lat = [x for _, ls in runs for x in ls]
        print(f"| {replicas} | {clients} | {rate[(replicas, clients)]:.2f} | {pct(lat, .5):.2f} | {pct(lat, .99):.2f} |")
    for clients in (4, 16):
        print(f"\nscale-out ratio at {clients} clients (2 replicas / 1): "
              f"{rate[(2, clients)] / rate[(1, clients)]:.2f}")


if __name__ == "__main__":
    main()
