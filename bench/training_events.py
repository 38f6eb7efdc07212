"""CPU the service spends on training event streams: N subscribers to one running training.

Not a test: prints a markdown table for docs/benchmarks.md. Issue 17 item 19: every subscriber of
``GET /api/trainings/{id}/events`` re-read the run's files every 0.25 s (30 subscribers = 0.28 of a core).
For each implementation (``--baseline REV``, exported from git, and this tree; one after the other, same
machine, same settings) it starts ``flux-service serve`` on the demo model, starts a training that runs
until cancelled, and measures the server process's own CPU time (the trainer is another process) over the
same window with 0 subscribers and with N; the difference is what the subscribers cost. Run from the
repository root:

    .venv/bin/python bench/training_events.py --baseline 4b81dda --subscribers 30 --seconds 20 --warm-steps 300
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def export(rev: str) -> Path:
    """The tree of ``rev`` in a temporary folder (``git archive``)."""
    target = Path(tempfile.mkdtemp(prefix="flux-bench-rev-"))
    data = subprocess.run(["git", "archive", rev], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(target, filter="data")
    return target


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def photos() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(4):
        a = np.clip(np.full((64, 64, 3), (220, 20, 20)) + rng.integers(-20, 21, (64, 64, 3)), 0, 255)
        buf = io.BytesIO()
        Image.fromarray(a.astype(np.uint8)).save(buf, "PNG")
        out.append((f"p{i}.png", buf.getvalue()))
    return out


@contextmanager
def serve(root: Path, **env_extra: str):
    """``flux-service serve`` of the tree at ``root`` on the demo model, own folders; yields (process, url)."""
    base = Path(tempfile.mkdtemp(prefix="flux-bench-train-"))
    (base / "models").mkdir()
    shutil.copy(root / "models" / "tasks.toml", base / "models" / "tasks.toml")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    env.update(FLUX_DATA_DIR=str(base / "data"), FLUX_MODELS_DIR=str(base / "models"), FLUX_DEVICE="cpu",
               FLUX_TRAININGS_DIR=str(base / "trainings"), FLUX_MIN_SIZE="16", **env_extra)
    with open(base / "server.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                                cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        end = time.monotonic() + 300
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > end or proc.poll() is not None:
                raise RuntimeError("server did not start: " + (base / "server.log").read_text()[-2000:])
            time.sleep(0.3)
        yield proc, url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)


def measure(root: Path, subscribers: int, seconds: float, warm_steps: int) -> dict:
    stop = threading.Event()
    with serve(root) as (proc, url):
        c = httpx.Client(base_url=url, timeout=120)
        run = c.post("/api/trainings", files=[("photos", p) for p in photos()],
                     data={"name": "bench", "trigger": "ohwx", "steps": "100000"}).json()
        run_id = run["id"]
        while c.get(f"/api/trainings/{run_id}").json()["step"] < warm_steps:
            time.sleep(0.5)
        t0 = cpu_s(proc.pid)
        time.sleep(seconds)
        idle = cpu_s(proc.pid) - t0
        received = [0] * subscribers

        def follow(i: int) -> None:
            with httpx.Client(base_url=url, timeout=None) as s, s.stream("GET", f"/api/trainings/{run_id}/events") as r:
                for _ in r.iter_lines():
                    received[i] += 1
                    if stop.is_set():
                        return

        threads = [threading.Thread(target=follow, args=(i,), daemon=True) for i in range(subscribers)]
        for t in threads:
            t.start()
        time.sleep(3)  # every subscriber connected and caught up with the events so far
        steps_before = c.get(f"/api/trainings/{run_id}").json()["step"]
        t0 = cpu_s(proc.pid)
        time.sleep(seconds)
        busy = cpu_s(proc.pid) - t0
        steps = c.get(f"/api/trainings/{run_id}").json()["step"]
        stop.set()
        c.delete(f"/api/trainings/{run_id}")
        return {"idle": idle / seconds, "busy": busy / seconds, "steps_at_start": steps_before,
                "steps_per_s": (steps - steps_before) / seconds, "lines": sum(received)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="git revision to compare with (exported to a temporary folder)")
    ap.add_argument("--subscribers", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warm-steps", type=int, default=20, help="steps the training has done before measuring (the "
                    "old readers' cost grows with the events already written)")
    args = ap.parse_args()
    sides = ([(f"`{args.baseline}`", export(args.baseline))] if args.baseline else []) + [("this tree", ROOT)]
    print(f"| implementation | server CPU, no subscriber (cores) | with {args.subscribers} subscribers | "
          "subscribers' cost | steps/s of the training | events already in the run |")
    print("|---|---|---|---|---|---|")
    costs = []
    for label, root in sides:
        m = measure(root, args.subscribers, args.seconds, args.warm_steps)
        costs.append(m["busy"] - m["idle"])
        print(f"| {label} | {m['idle']:.3f} | {m['busy']:.3f} | {costs[-1]:.3f} | {m['steps_per_s']:.1f} | "
              f"{m['steps_at_start']} |", flush=True)
    for label, root in sides:
        if root != ROOT:
            shutil.rmtree(root, ignore_errors=True)
    if len(costs) == 2:
        print(f"\nsubscribers' CPU, this tree / baseline: {costs[1] / costs[0]:.2f}" if costs[0] > 0 else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
