"""What the HTTP service adds on top of a direct engine call, and how it behaves under concurrent clients.

Not a test: prints a markdown table for docs/benchmarks.md. Run from the repository root:

    .venv/bin/python bench/http_overhead.py            # demo model, 512x512, 4 steps
    .venv/bin/python bench/http_overhead.py --pairs 30 --steps 8

1. Overhead: the same request (512x512, fixed seed) alternately through ``engine.generate`` in this process
   and through ``POST /api/generate-image`` on a real uvicorn server process (same weights, same settings),
   interleaved so drift in machine load hits both sides alike. The direct side is timed twice: generation
   alone, and generation + PNG encoding (what the service must do to send bytes, and what a script does to
   save a file).
2. Concurrency: 1, 4 and 16 closed-loop clients; throughput, p50/p99 latency, status codes (503 is the
   designed answer of a full queue), and FIFO inversions (a request queued >= 50 ms before another that
   started after it, judged from the server's own X-Queue-Wait / X-Generation-Time; one worker serving in
   order makes this 0).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.stats import pct, run_clients  # noqa: E402 - after the path insert


def start_server(queue_size: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    env.update(FLUX_QUEUE_SIZE=str(queue_size), FLUX_REQUEST_TIMEOUT_S="600",
               FLUX_DATA_DIR=tempfile.mkdtemp(prefix="flux-bench-data-"))  # its own job store folder
    log = tempfile.NamedTemporaryFile(prefix="flux-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--port", str(port),
                             "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited; see {log.name}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server not ready; see {log.name}")


def overhead(engine, url: str, args) -> list[str]:
    from pipelines.types import GenerationRequest

    req = GenerationRequest(prompt="a science studio", width=args.size, height=args.size,
                            num_inference_steps=args.steps, seed=1)
    form = {"prompt": req.prompt, "width": str(args.size), "height": str(args.size),
            "num_inference_steps": str(args.steps), "seed": "1"}
    gen, gen_png, http = [], [], []
    with httpx.Client(base_url=url, timeout=600) as client:
        for i in range(args.warmup + args.pairs):
            order = (0, 1) if i % 2 == 0 else (1, 0)  # alternate who goes first
            for side in order:
                if side == 0:
                    t0 = time.perf_counter()
                    result = engine.generate(req)
                    t1 = time.perf_counter()
                    result.png_bytes()
                    t2 = time.perf_counter()
                    if i >= args.warmup:
                        gen.append(t1 - t0)
                        gen_png.append(t2 - t0)
                else:
                    t0 = time.perf_counter()
                    r = client.post("/api/generate-image", data=form)
                    t1 = time.perf_counter()
                    r.raise_for_status()
                    if i >= args.warmup:
                        http.append(t1 - t0)
    rows = ["| path | p50 ms | p99 ms | p50 overhead vs path | ratio p50 |", "|---|---:|---:|---:|---:|"]
    sides = (("engine.generate", gen), ("engine.generate + PNG", gen_png), ("HTTP POST /api/generate-image", http))
    for name, vals in sides:
        rows.append(f"| {name} | {pct(vals, .5) * 1e3:.1f} | {pct(vals, .99) * 1e3:.1f} | | |")
    for name, base in (("engine.generate", gen), ("engine.generate + PNG", gen_png)):
        d50 = (pct(http, .5) - pct(base, .5)) * 1e3
        d99 = (pct(http, .99) - pct(base, .99)) * 1e3
        rows.append(f"| HTTP over {name} | {d50:+.1f} | {d99:+.1f} | {d50 / (pct(base, .5) * 1e3):+.1%} | "
                    f"{pct(http, .5) / pct(base, .5):.3f} |")
    return rows


def concurrency(url: str, clients: int, per_client: int, args) -> str:
    form = {"prompt": "a science studio", "width": str(args.size), "height": str(args.size),
            "num_inference_steps": str(args.steps)}
    records: list[tuple[float, float, int, float, float]] = []  # sent, done, status, server start, arrival
    lock = threading.Lock()

    def run():
        with httpx.Client(base_url=url, timeout=600) as c:
            for _ in range(per_client):
                sent = time.perf_counter()
                r = c.post("/api/generate-image", data=form)
                done = time.perf_counter()
                start = arrival = float("nan")
                if r.status_code == 200:  # the server's view, from its own timings (one clock: this machine)
                    start = done - float(r.headers["x-generation-time"])
                    arrival = start - float(r.headers["x-queue-wait"])
                with lock:
                    records.append((sent, done, r.status_code, start, arrival))
                if r.status_code == 503:
                    time.sleep(float(r.headers.get("retry-after", "1")))

    wall = run_clients(clients, run)
    ok = [r for r in records if r[2] == 200]
    lat = [r[1] - r[0] for r in ok]
    statuses: dict[int, int] = {}
    for r in records:
        statuses[r[2]] = statuses.get(r[2], 0) + 1
    # FIFO: a request that reached the queue >= 50 ms before another must not start after it
    inversions = sum(1 for a in ok for b in ok if a[4] + 0.05 <= b[4] and a[3] > b[3] + 0.05)
    codes = ", ".join(f"{k}: {v}" for k, v in sorted(statuses.items()))
    return (f"| {clients} | {len(records)} | {len(ok) / wall:.3f} | {pct(lat, .5) * 1e3:.0f} | "
            f"{pct(lat, .99) * 1e3:.0f} | {codes} | {inversions} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--pairs", type=int, default=30, help="interleaved direct/HTTP pairs measured")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--queue-size", type=int, default=16)
    p.add_argument("--levels", default="1:8,4:4,16:2", help="clients:requests_per_client,...")
    args = p.parse_args()

    from pipelines.engine import FluxEngine
    from pipelines.settings import Settings

    engine = FluxEngine.from_settings(Settings(_env_file=None))
    proc, url = start_server(args.queue_size)
    try:
        print(f"## HTTP overhead ({engine.source.label} model, {engine.device}, {args.size}x{args.size}, "
              f"{args.steps} steps, {args.pairs} interleaved pairs)\n")
        print("\n".join(overhead(engine, url, args)))
        print(f"\n## Concurrent clients (closed loop, queue size {args.queue_size})\n")
        print("| clients | requests | images/s | p50 ms | p99 ms | status codes | FIFO inversions |")
        print("|---:|---:|---:|---:|---:|---|---:|")
        for level in args.levels.split(","):
            clients, per = (int(x) for x in level.split(":"))
            print(concurrency(url, clients, per, args), flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


if __name__ == "__main__":
    main()
