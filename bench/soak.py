"""Soak: mixed traffic for a few minutes, one SIGTERM + restart in the middle, and no accepted job lost.

Not a test (``--quick`` is run by tests/test_soak_quick.py so this script cannot rot): prints a markdown
report for docs/benchmarks.md. Loopback only (127.0.0.1), bounded in time. Run from the repository root:

    .venv/bin/python bench/soak.py              # about 4 minutes on the demo model
    .venv/bin/python bench/soak.py --quick      # about 30 s: the same steps, shorter

What it does: starts ``uvicorn app.main:create_app --factory`` on the demo model with its own data folder, then
runs phases of closed-loop clients at several concurrencies. Each client picks at random: a direct
``POST /api/generate-image`` (various tasks, sizes, steps), a job (``POST /api/jobs``, followed by server-sent
events or by polling), a direct request it abandons after a fraction of a second (a client disconnect), or a
job it cancels. Half-way through the middle phase the server gets SIGTERM; the script measures how long it
takes to exit, starts it again on the same port and data folder, and the clients carry on (connection errors
while it is down are counted apart). At the end every accepted job must reach a terminal state on the
restarted server: a job that vanished or never finished is "lost" (must be 0).

Outcomes: ``succeeded`` (200 PNG / job succeeded), ``refused 503`` (JSON envelope with ``Retry-After``: a full
queue or the drain), ``failed`` (anything else: other statuses, a 503 without envelope or Retry-After, a
broken connection while the server was up, a job that failed), ``unavailable`` (no connection while the
server restarted), ``abandoned`` (client disconnects on purpose).
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

from bench.stats import pct, rss_mib  # noqa: E402 - after the path insert

TASKS = [None, "host_face", "science_background", "character_face"]


class Server:
    def __init__(self, port: int, data_dir: str, grace_s: float, queue_size: int) -> None:
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        self.env.update(FLUX_DATA_DIR=data_dir, FLUX_SHUTDOWN_GRACE_S=str(grace_s), FLUX_QUEUE_SIZE=str(queue_size),
                        FLUX_MIN_SIZE="16", FLUX_REQUEST_TIMEOUT_S="300", FLUX_HOST="127.0.0.1",
                        FLUX_MAX_JOBS_KEPT="100000")  # retention must not be mistaken for loss
        self.log = tempfile.NamedTemporaryFile(prefix="flux-soak-", suffix=".log", delete=False).name
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 300) -> float:
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
                 "--port", str(self.port), "--log-level", "warning", "--no-access-log",
                 "--http", "app.http.server_guard:GuardedH11Protocol"],  # as operators run it (docs/http-api.md)
                cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        while time.monotonic() - started < timeout_s:
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited with {self.proc.returncode}; see {self.log}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.proc.kill()
        raise SystemExit(f"server not ready after {timeout_s}s; see {self.log}")

    def sigterm(self, limit_s: float) -> float:
        sent = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return time.monotonic() - sent

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.sigterm(60)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}
        self.latency: dict[str, list[float]] = {"direct": [], "job": []}
        self.jobs: dict[str, dict] = {}  # accepted job id -> {"seed", "cancelled"}
        self.failures: list[str] = []

    def count(self, outcome: str, detail: str = "") -> None:
        with self.lock:
            self.counts[outcome] = self.counts.get(outcome, 0) + 1
            if outcome == "failed" and len(self.failures) < 20:
                self.failures.append(detail)


class Clients:
    """Closed-loop clients; ``down`` is set while the server restarts (connection errors are expected then)."""

    def __init__(self, url: str, tally: Tally, rng_seed: int, quick: bool) -> None:
        self.url, self.tally, self.quick = url, tally, quick
        self.rng = random.Random(rng_seed)
        self.down = threading.Event()
        self.stop = threading.Event()

    def fields(self, rng: random.Random) -> dict:
        task = rng.choice(TASKS)
        size = rng.choice([32, 64] if self.quick else [64, 128])
        f = {"prompt": rng.choice(["科普主持人，微笑", "a science studio", "实验室背景"]), "width": str(size),
             "height": str(size), "num_inference_steps": str(rng.choice([1, 2, 3])), "seed": str(rng.randrange(2**31))}
        if task:
            f.update(use_model_manager="true", task=task)
        return f

    def _connection_error(self, exc: Exception) -> None:
        if self.down.is_set() or self.stop.is_set():
            self.tally.count("unavailable")
            time.sleep(1.0)
        else:
            self.tally.count("failed", f"connection error while up: {exc!r}")

    def _refused(self, r: httpx.Response) -> bool:
        """A 503 as designed: JSON envelope and Retry-After."""
        if r.status_code != 503:
            return False
        try:
            envelope = "error" in r.json()
        except ValueError:
            envelope = False
        ok = "retry-after" in r.headers and r.headers.get("content-type", "").startswith("application/json") \
            and envelope
        self.tally.count("refused 503" if ok else "failed", f"503 without envelope/Retry-After: {r.text[:200]}")
        time.sleep(min(float(r.headers.get("retry-after", 1)), 2.0) * 0.5)
        return True

    def run(self, client_id: int) -> None:
        rng = random.Random(self.rng.random() + client_id)
        with httpx.Client(base_url=self.url, timeout=300) as c:
            while not self.stop.is_set():
                action = rng.random()
                try:
                    if action < 0.45:
                        self.direct(c, rng)
                    elif action < 0.85:
                        self.job(c, rng, cancel=action > 0.81)
                    else:
                        self.abandon(rng)
                except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                    self._connection_error(exc)
                except Exception as exc:  # noqa: BLE001 - a surprise is a failure to report, not a dead client
                    self.tally.count("failed", f"client error: {exc!r}")

    def direct(self, c: httpx.Client, rng: random.Random) -> None:
        self.tally.count("sent")
        t0 = time.monotonic()
        r = c.post("/api/generate-image", data=self.fields(rng))
        if r.status_code == 200 and r.headers.get("content-type") == "image/png":
            self.tally.count("succeeded")
            with self.tally.lock:
                self.tally.latency["direct"].append(time.monotonic() - t0)
        elif not self._refused(r):
            self.tally.count("failed", f"direct {r.status_code}: {r.text[:200]}")

    def abandon(self, rng: random.Random) -> None:
        self.tally.count("sent")
        try:
            with httpx.Client(base_url=self.url, timeout=rng.choice([0.05, 0.2, 0.5])) as c:
                r = c.post("/api/generate-image", data=self.fields(rng))
        except httpx.TimeoutException:
            self.tally.count("abandoned")
            return
        if r.status_code == 200:
            self.tally.count("succeeded")  # it was faster than the client's patience
        elif not self._refused(r):
            self.tally.count("failed", f"abandon {r.status_code}: {r.text[:200]}")

    def job(self, c: httpx.Client, rng: random.Random, cancel: bool) -> None:
        self.tally.count("sent")
        t0 = time.monotonic()
        fields = self.fields(rng)
        r = c.post("/api/jobs", data=fields)
        if r.status_code != 202:
            if not self._refused(r):
                self.tally.count("failed", f"job {r.status_code}: {r.text[:200]}")
            return
        job_id = r.json()["id"]
        with self.tally.lock:
            self.tally.jobs[job_id] = {"seed": int(fields["seed"]), "cancelled": cancel}
        if cancel:
            c.delete(f"/api/jobs/{job_id}")
            self.tally.count("cancelled by client")
            return
        final = self.follow(c, job_id, sse=rng.random() < 0.5)
        if final is None:
            return  # still unfinished when the run stopped: the final check decides
        if final["status"] == "succeeded":
            self.tally.count("succeeded")
            with self.tally.lock:
                self.tally.latency["job"].append(time.monotonic() - t0)
        else:
            self.tally.count("failed", f"job {final['status']}: {final.get('error')}")

    def follow(self, c: httpx.Client, job_id: str, sse: bool) -> dict | None:
        if sse:
            try:
                with c.stream("GET", f"/api/jobs/{job_id}/events") as r:
                    name = None
                    for line in r.iter_lines():
                        if line.startswith("event: "):
                            name = line[7:]
                        elif line.startswith("data: ") and name in ("succeeded", "failed", "cancelled"):
                            return json.loads(line[6:])
                    # ended without a terminal event: the "shutdown" event (the job resumes after the restart)
            except httpx.TransportError:
                pass
        while not self.stop.is_set():
            try:
                job = c.get(f"/api/jobs/{job_id}").json()
                if job.get("status") in ("succeeded", "failed", "cancelled"):
                    return job
            except (httpx.TransportError, ValueError):
                pass  # restarting
            time.sleep(0.25)
        return None


def retained_rss(n: int, size: int) -> int:
    """RSS of a fresh server before and after ``n`` finished jobs of ``size``x``size`` are kept (1 step each)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Server(port, tempfile.mkdtemp(prefix="flux-soak-data-"), 5.0, n + 1)
    server.env["FLUX_MAX_SIZE"] = str(max(size, 2048))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as c:
            warm = c.post("/api/generate-image", data={"prompt": "warm", "width": size, "height": size,
                                                       "num_inference_steps": 1})
            warm.raise_for_status()
            time.sleep(1.0)
            before = rss_mib(server.proc.pid)
            ids = [c.post("/api/jobs", data={"prompt": f"r{i}", "width": size, "height": size,
                                             "num_inference_steps": 1, "seed": i}).json()["id"] for i in range(n)]
            for job_id in ids:
                while c.get(f"/api/jobs/{job_id}").json()["status"] not in ("succeeded", "failed", "cancelled"):
                    time.sleep(0.3)
            time.sleep(1.0)
            after = rss_mib(server.proc.pid)
            png = len(c.get(f"/api/jobs/{ids[-1]}/image").content)
    finally:
        server.stop()
    print(f"| {n} retained {size}x{size} jobs (PNG ~{png / 2**20:.2f} MiB each) | RSS {before:.0f} -> {after:.0f} MiB "
          f"| {after - before:+.1f} MiB |")
    return 0


def _across(job: dict, sigterm_wall: float | None) -> int:
    """1 when the job was accepted before the SIGTERM and finished after it (kept across the restart)."""
    from datetime import datetime

    if sigterm_wall is None or not job.get("finished_at"):
        return 0
    ts = lambda iso: datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()  # noqa: E731
    return int(ts(job["created_at"]) < sigterm_wall < ts(job["finished_at"]))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short phases (CI smoke run, about 30 s)")
    p.add_argument("--phase-s", type=float, help="seconds per concurrency phase (default 60; quick 5)")
    p.add_argument("--concurrency", default=None, help="comma-separated client counts (default 1,4,12; quick 1,4)")
    p.add_argument("--grace", type=float, default=5.0, help="FLUX_SHUTDOWN_GRACE_S of the server")
    p.add_argument("--queue-size", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    p.add_argument("--retained-rss", type=int, metavar="N",
                   help="instead: RSS growth of a server that keeps N finished jobs (see --size)")
    p.add_argument("--size", type=int, default=1024, help="image size for --retained-rss")
    args = p.parse_args()
    if args.retained_rss:
        return retained_rss(args.retained_rss, args.size)
    phase_s = args.phase_s or (5.0 if args.quick else 60.0)
    levels = [int(x) for x in (args.concurrency or ("1,4" if args.quick else "1,4,12")).split(",")]

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tempfile.mkdtemp(prefix="flux-soak-data-")
    server = Server(port, data_dir, args.grace, args.queue_size)
    tally = Tally()
    t_run = time.monotonic()
    ready_s = server.start()
    rss_start = rss_mib(server.proc.pid)
    restart: dict = {}
    try:
        middle = len(levels) // 2
        for i, n in enumerate(levels):
            clients = Clients(server.url, tally, args.seed + i, args.quick)
            threads = [threading.Thread(target=clients.run, args=(k,), daemon=True) for k in range(n)]
            for t in threads:
                t.start()
            if i == middle:  # SIGTERM + restart half-way through the middle phase
                time.sleep(phase_s / 2)
                restart["rss_before_sigterm"] = rss_mib(server.proc.pid)
                restart["sigterm_wall"] = time.time()
                clients.down.set()
                restart["exit_s"] = server.sigterm(args.grace + 30)
                restart["returncode"] = server.proc.returncode
                restart["ready_s"] = server.start()
                clients.down.clear()
                time.sleep(phase_s / 2)
            else:
                time.sleep(phase_s)
            clients.stop.set()
            for t in threads:
                t.join(timeout=120)

        # every accepted job must end on the restarted server
        lost, outcome, carried = [], {"succeeded": 0, "failed": 0, "cancelled": 0}, 0
        deadline = time.monotonic() + 180
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for job_id in list(tally.jobs):
                while True:
                    r = c.get(f"/api/jobs/{job_id}")
                    status = r.json().get("status") if r.status_code == 200 else None
                    if status in outcome:
                        outcome[status] += 1
                        carried += _across(r.json(), restart.get("sigterm_wall"))
                        break
                    if r.status_code == 404 or time.monotonic() > deadline:
                        lost.append((job_id, r.status_code, status))
                        break
                    time.sleep(0.3)
        time.sleep(1.0)
        rss_end = rss_mib(server.proc.pid)
    finally:
        server.stop()
    took = time.monotonic() - t_run

    c = tally.counts
    direct, jobs = tally.latency["direct"], tally.latency["job"]
    figures = {
        "concurrency": levels, "phase_s": phase_s, "grace_s": args.grace, "queue_size": args.queue_size,
        "sent": c.get("sent", 0) - c.get("unavailable", 0), "succeeded": c.get("succeeded", 0), "refused_503": c.get("refused 503", 0),
        "failed": c.get("failed", 0), "unavailable_during_restart": c.get("unavailable", 0),
        "abandoned": c.get("abandoned", 0), "cancelled_by_client": c.get("cancelled by client", 0),
        "jobs_accepted": len(tally.jobs), "jobs_final": outcome, "jobs_lost": len(lost),
        "jobs_across_restart": carried,
        "direct_p50_s": pct(direct, 0.5), "direct_p99_s": pct(direct, 0.99), "job_p50_s": pct(jobs, 0.5),
        "job_p99_s": pct(jobs, 0.99), "rss_start_mib": rss_start, "rss_end_mib": rss_end,
        "rss_before_sigterm_mib": restart.get("rss_before_sigterm"), "sigterm_exit_s": restart.get("exit_s"),
        "sigterm_returncode": restart.get("returncode"), "first_ready_s": ready_s,
        "restart_ready_s": restart.get("ready_s"), "total_s": took,
    }
    print(f"# soak: {took:.0f}s, concurrency {levels}, {phase_s:g}s per phase, SIGTERM + restart in phase "
          f"{levels[len(levels) // 2]} (grace {args.grace:g}s, queue {args.queue_size})\n")
    print("| figure | value |\n|---|---:|")
    rows = [("requests sent (not counting tries that found no server while it restarted)", figures["sent"]), ("succeeded", figures["succeeded"]),
            ("refused with 503 (envelope + Retry-After)", figures["refused_503"]), ("failed", figures["failed"]),
            ("no connection while restarting", figures["unavailable_during_restart"]),
            ("abandoned by the client (disconnects)", figures["abandoned"]),
            ("jobs cancelled by the client", figures["cancelled_by_client"]),
            ("jobs accepted", figures["jobs_accepted"]),
            ("jobs at the end: succeeded / failed / cancelled",
             f"{outcome['succeeded']} / {outcome['failed']} / {outcome['cancelled']}"),
            ("jobs accepted before the SIGTERM and finished after it", carried),
            ("**accepted jobs lost**", f"**{len(lost)}**"),
            ("direct request latency p50 / p99 (s)", f"{figures['direct_p50_s']:.2f} / {figures['direct_p99_s']:.2f}"),
            ("job latency p50 / p99 (s, submit to succeeded)", f"{figures['job_p50_s']:.2f} / {figures['job_p99_s']:.2f}"),
            ("SIGTERM to exit (s)", f"{restart.get('exit_s', float('nan')):.2f} (grace {args.grace:g})"),
            ("restart to ready (s)", f"{restart.get('ready_s', float('nan')):.1f}"),
            ("RSS at start / before SIGTERM (MiB)", f"{rss_start:.0f} / {restart.get('rss_before_sigterm', 0):.0f}"),
            ("RSS at the end, restarted process (MiB)", f"{rss_end:.0f}")]
    for name, value in rows:
        print(f"| {name} | {value} |")
    if tally.failures:
        print("\nfirst failures:\n" + "\n".join(f"- {f}" for f in tally.failures))
    if lost:
        print("\nlost jobs: " + ", ".join(f"{j} ({code}, {st})" for j, code, st in lost[:20]))
    if args.json:
        print(json.dumps(figures))
    return 1 if lost or figures["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
