"""Probes of the job system: the job store under faults, finished jobs' streams, stored images, headers, start-up.

Each attack of issue 17 items 1, 8, 9, 12, 15, 16, 17 and the start-up traceback, made the way the issue made it
against a real ``flux-service serve``: the database files overwritten or deleted by another process, a write lock
held by another process, bytes of a stored PNG changed. A full disk and a worker thread that dies cannot be
caused from outside a product server without privileges or test hooks: tests/test_jobs_store_faults.py and
tests/test_jobs_worker_failure.py cover them. Names start with ``jobs:`` (``bench/adversary.py -k jobs:``).
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time

import httpx

from bench.probes import ROOT, Failed, Probe, Server, Target

TINY = {"prompt": "probe", "width": "16", "height": "16", "num_inference_steps": "2"}
#: a job that runs for seconds on the demo model on a CPU, so an attack can land while it runs
LONG = {"prompt": "probe", "width": "1024", "height": "1024", "num_inference_steps": "28"}


def _until(predicate, timeout: float, what: str, interval: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise Failed(f"{what} (waited {timeout:g}s)")


def _submit(c: httpx.Client, fields: dict) -> str:
    r = c.post("/api/jobs", data=fields)
    if r.status_code != 202:
        raise Failed(f"POST /api/jobs answered {r.status_code}: {r.text[:200]}")
    return r.json()["id"]


def _state(c: httpx.Client, job_id: str) -> str:
    """The job's status; a 404 or a 500 for an accepted job is the failure the issue reports."""
    r = c.get(f"/api/jobs/{job_id}")
    if r.status_code == 503:
        return "unavailable"
    if r.status_code != 200:
        raise Failed(f"GET /api/jobs/{job_id} of an accepted job answered {r.status_code}: {r.text[:200]}")
    return r.json()["status"]


def _finished(c: httpx.Client, job_id: str, timeout: float = 120) -> str:
    return _until(lambda: (s := _state(c, job_id)) in ("succeeded", "failed", "cancelled") and s, timeout,
                  f"job {job_id} did not finish")


def _rows(data_dir) -> dict:
    db = sqlite3.connect(data_dir / "jobs.sqlite3")
    try:
        return dict(db.execute("SELECT id, status FROM jobs").fetchall())
    finally:
        db.close()


def _restart(target: Target, server: Server) -> Server:
    server.stop()
    again = Server(env=dict(server.env), data_dir=server.data_dir).start()
    target.started.append(again)
    return again


def database_overwritten_while_a_job_runs(target: Target) -> None:
    """Item 1: the worker died in prune (DatabaseError); requests then waited 30 s for a 504, /ready said 200."""
    server = target.server(fresh=True)
    with server.client() as c:
        job = _submit(c, LONG)
        _until(lambda: _state(c, job) == "running", 60, "the long job never ran")
        for suffix in ("", "-wal", "-shm"):
            path = server.data_dir / f"jobs.sqlite3{suffix}"
            if path.exists():
                with open(path, "r+b") as fh:  # another process than the server's: its locks are unaffected
                    fh.write(os.urandom(path.stat().st_size))
        if _finished(c, job) != "succeeded":
            raise Failed(f"the job running during the attack ended {_state(c, job)}")
        _until(lambda: c.get("/ready").status_code == 200, 10, "/ready did not come back to 200")
        t0 = time.monotonic()
        r = c.post("/api/generate-image", data=TINY, timeout=60)
        if r.status_code != 200 or time.monotonic() - t0 > 30:
            raise Failed(f"a direct request after the attack answered {r.status_code} in {time.monotonic() - t0:.0f}s")
        if not list(server.data_dir.glob("jobs.sqlite3.damaged-*")):
            raise Failed("the damaged database was not moved aside")
    if _rows(server.data_dir).get(job) != "succeeded":
        raise Failed("the job is not in the new database")


def database_locked_by_another_process(target: Target) -> None:
    """Item 8 (and 15): under another process's write lock a running job's update failed and GET said 404."""
    server = target.server(fresh=True)
    holder_code = ("import select, sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
                   "db.execute('BEGIN IMMEDIATE'); print('locked', flush=True); select.select([sys.stdin], [], [], 60)")
    with server.client() as c:
        job = _submit(c, LONG)
        _until(lambda: _state(c, job) == "running", 60, "the long job never ran")
        holder = subprocess.Popen([sys.executable, "-c", holder_code, str(server.data_dir / "jobs.sqlite3")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            if holder.stdout.readline().strip() != "locked":
                raise Failed("could not take the lock")
            _finished(c, job)  # _state fails on a 404
            ready = _until(lambda: (r := c.get("/ready")).status_code == 503 and r, 10,
                           "/ready stayed 200 while the job store could not write")
            if ready.json().get("status") != "storage_unavailable":
                raise Failed(f"/ready said {ready.json()} while the database was locked")
            refused = c.post("/api/jobs", data=TINY)
            if refused.status_code != 503 or refused.json()["error"]["type"] != "storage_unavailable":
                raise Failed(f"a new job while the database was locked answered {refused.status_code}")
            if str(server.data_dir) in refused.text or str(server.data_dir) in ready.text:
                raise Failed("a storage_unavailable answer names the server's data folder")
        finally:
            holder.communicate("release\n", timeout=30)
        _until(lambda: c.get("/ready").status_code == 200, 10, "/ready did not come back after the lock cleared")
        if _state(c, job) != "succeeded":
            raise Failed(f"the job ended {_state(c, job)}")
    _until(lambda: _rows(server.data_dir).get(job) == "succeeded", 5, "the job's end was not written after the lock")


def database_deleted_while_running(target: Target) -> None:
    """Item 17: after the database file was deleted, the jobs accepted later were gone at the next start."""
    server = target.server(fresh=True)
    with server.client() as c:
        before = _submit(c, TINY)
        _finished(c, before)
        for suffix in ("", "-wal", "-shm"):
            (server.data_dir / f"jobs.sqlite3{suffix}").unlink(missing_ok=True)
        after = _submit(c, TINY)
        _finished(c, after)
    server = _restart(target, server)
    with server.client() as c:
        for job in (before, after):
            if _state(c, job) != "succeeded":
                raise Failed(f"job {job} accepted around the deletion is {_state(c, job)} after the restart")


def finished_job_preview_stream(target: Target) -> None:
    """Item 9: GET /api/jobs/{finished id}/events?preview=true was a 200 and then a broken stream."""
    server = target.server()
    with server.client() as c:
        job = _submit(c, TINY)
        _finished(c, job)
        time.sleep(0.5)  # its end written: a row now, not a job in memory
        try:
            with c.stream("GET", f"/api/jobs/{job}/events?preview=true") as r:
                body = "".join(r.iter_text())
        except httpx.HTTPError as exc:
            raise Failed(f"the stream broke: {exc!r}") from None
        if r.status_code != 200 or "event: succeeded" not in body:
            raise Failed(f"the stream answered {r.status_code} with {body[:200]!r}")


def prompt_warnings_header_is_cut(target: Target) -> None:
    """Item 12: X-Prompt-Warnings was 29 KB for a 2000-character prompt (the X-Prompt-* headers are cut at 2048)."""
    server = target.server()
    with server.client() as c:
        # rare characters (CJK extension B) no prompt stage translates: the warnings quote them
        r = c.post("/api/generate-image", data={**TINY, "prompt": "𠀀𠀁𠀂" * 666})
        if r.status_code != 200:
            raise Failed(f"a 2000-character prompt answered {r.status_code}")
        long = {k: len(v) for k, v in r.headers.items() if k.lower().startswith("x-") and len(v) > 2048}
        if long:
            raise Failed(f"headers longer than 2048 characters: {long}")


def adapter_warnings_name_no_server_path(target: Target) -> None:
    """Item 15: X-Adapter-Warnings named the server's models folder (an absolute FLUX_MODELS_DIR)."""
    server = target.server()
    with server.client() as c:
        r = c.post("/api/generate-image", data={**TINY, "use_model_manager": "true", "task": "host_face"})
        if r.status_code != 200:
            raise Failed(f"a host_face request answered {r.status_code}")
        warnings = r.headers.get("x-adapter-warnings", "")
        if not json.loads(warnings):
            raise Failed("no adapter warning: the demo's LoRA stands in silently")
        leaks = [p for p in (str(server.data_dir), str(ROOT), os.path.expanduser("~")) if p in warnings]
        if leaks:
            raise Failed(f"X-Adapter-Warnings names server paths {leaks}: {warnings[:300]}")


def damaged_image_is_not_served(target: Target) -> None:
    """Item 16: a PNG changed in the store was served with 200."""
    server = target.server()
    with server.client() as c:
        job = _submit(c, TINY)
        _finished(c, job)
        path = server.data_dir / "images" / f"{job}.png"
        png = bytearray(path.read_bytes())
        png[len(png) // 2] ^= 0xFF
        path.write_bytes(bytes(png))
        r = c.get(f"/api/jobs/{job}/image")
        if r.status_code == 200:
            raise Failed("the damaged PNG was served with 200")
        if r.json()["error"]["type"] != "image_corrupt" or job not in r.json()["error"]["message"]:
            raise Failed(f"the damaged PNG answered {r.status_code} {r.text[:200]}")


def start_up_error_is_one_line(target: Target) -> None:
    """The lead's find: a configuration error found in the lifespan printed uvicorn's traceback first."""
    server = Server(env={"FLUX_TASKS_FILE": "/nonexistent/tasks.toml"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    env.update(FLUX_DATA_DIR=str(server.data_dir), FLUX_TASKS_FILE="/nonexistent/tasks.toml")
    out = subprocess.run([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(server.port)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if out.returncode == 0 or "Traceback" in out.stderr + out.stdout:
        raise Failed(f"exit status {out.returncode}; output: {(out.stderr + out.stdout)[-600:]}")
    if not any(line.startswith("error (config_error): task table") for line in out.stderr.splitlines()):
        raise Failed(f"no one-line error: {out.stderr[-600:]}")


PROBES: list[Probe] = [
    Probe("jobs: database overwritten while a job runs", database_overwritten_while_a_job_runs, "high",
          destructive=True, slow=True),
    Probe("jobs: database write-locked by another process", database_locked_by_another_process, "medium",
          destructive=True, slow=True),
    Probe("jobs: database deleted while running, then a restart", database_deleted_while_running, "low",
          destructive=True, slow=True),
    Probe("jobs: preview stream of a finished job", finished_job_preview_stream, "medium"),
    Probe("jobs: X-Prompt-Warnings of a 2000-character prompt", prompt_warnings_header_is_cut, "low"),
    Probe("jobs: X-Adapter-Warnings names no server path", adapter_warnings_name_no_server_path, "low"),
    Probe("jobs: a damaged stored PNG is not served", damaged_image_is_not_served, "low"),
    Probe("jobs: a start-up configuration error is one line", start_up_error_is_one_line, "low"),
]
