"""The job store under faults (issue 17 items 1, 8, 16, 17): a damaged, locked, full or deleted database and a
damaged image never kill the worker, never lose an accepted job and never answer 404 for a job that exists.

In-process apps (the real worker thread, job store and SQLite files) with the test routes; the faults are real
where a test can make them without privileges: the database files overwritten with random bytes, a write lock
held by a second process, the files deleted, an image's bytes changed. A full disk is injected at the write of
the image's temp file (as ENOSPC, after half of it was written). What a dead worker does to a real server
process (it exits non-zero and the job runs after the restart) is in tests/test_jobs_worker_failure.py.
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import sqlite3
import subprocess
import sys
import time

import pytest
from fastapi.testclient import TestClient

from app.jobs.database import JobDatabase
from app.main import create_app
from tests.conftest import make_settings
from tests.hooks import hooked
from tests.http_support import StepDelay, wait_until

TINY = {"prompt": "fault", "width": "32", "height": "32", "num_inference_steps": "2"}


@pytest.fixture()
def service(engine):
    """Build and start an in-process service on a data folder (a new one, or the one given: a restart)."""
    clients = []

    def start(data_dir=None):
        settings = make_settings(**({"data_dir": data_dir} if data_dir is not None else {}))
        client = TestClient(hooked(create_app(settings, engine=engine)))
        client.__enter__()
        clients.append(client)
        return client, settings.data_dir

    yield start
    for client in clients:
        client.__exit__(None, None, None)


def submit(c, **fields) -> str:
    r = c.post("/api/jobs", data={**TINY, **fields})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def status(c, job_id: str) -> str:
    return c.get(f"/api/jobs/{job_id}").json().get("status", "?")


def run_job(c, **fields) -> str:
    job_id = submit(c, **fields)
    wait_until(lambda: status(c, job_id) == "succeeded", timeout=60)
    wait_until(lambda: c.app.state.jobs.live(job_id) is None, timeout=5)  # only a row now
    return job_id


def rows_on_disk(data_dir) -> dict[str, str]:
    """id -> status as a fresh connection (the next start) reads the database."""
    db = sqlite3.connect(data_dir / "jobs.sqlite3")
    try:
        return dict(db.execute("SELECT id, status FROM jobs").fetchall())
    finally:
        db.close()


def lock_held_elsewhere(data_dir) -> bool:
    """Another process holds the database's write lock (a third process cannot take it at once)."""
    code = ("import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
            "try:\n    db.execute('BEGIN IMMEDIATE')\nexcept sqlite3.OperationalError:\n    sys.exit(3)\nsys.exit(0)")
    out = subprocess.run([sys.executable, "-c", code, str(data_dir / "jobs.sqlite3")], timeout=60)
    return out.returncode == 3


def overwrite_with_random_bytes(data_dir) -> None:
    """The issue's attack: the database and its WAL and shared-memory files, random bytes of the same size. From
    another process, as an attacker would (a descriptor opened and closed here would also drop this process's
    POSIX locks on the file, SQLite's included)."""
    code = ("import os, sys\nfor path in sys.argv[1:]:\n    if os.path.exists(path):\n"
            "        with open(path, 'r+b') as fh:\n            fh.write(os.urandom(os.path.getsize(path)))")
    subprocess.run([sys.executable, "-c", code, *(str(data_dir / f"jobs.sqlite3{s}") for s in ("", "-wal", "-shm"))],
                   check=True, timeout=30)


def test_a_database_overwritten_while_a_job_runs_is_moved_aside_and_the_service_goes_on(service, caplog):
    """Item 1: the worker thread died in ``prune`` (DatabaseError), requests then waited 30 s for a 504, /ready
    said 200 and GET /api/jobs/{id} answered 500."""
    caplog.set_level(logging.INFO, logger="app")
    c, data = service()
    with StepDelay(c, 0.3):
        job = submit(c, num_inference_steps="4")
        wait_until(lambda: status(c, job) == "running", timeout=30)
        overwrite_with_random_bytes(data)
    wait_until(lambda: status(c, job) == "succeeded", timeout=30)
    assert c.get(f"/api/jobs/{job}/image").status_code == 200
    assert c.get("/ready").status_code == 200
    t0 = time.monotonic()
    r = c.post("/api/generate-image", data=TINY)
    assert r.status_code == 200 and time.monotonic() - t0 < 20  # the worker is alive
    later = run_job(c)
    moved = sorted(p.name for p in data.glob("jobs.sqlite3.damaged-*"))
    assert moved and moved[0].startswith("jobs.sqlite3.damaged-")
    assert any("moved aside as " + moved[0] in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    assert rows_on_disk(data) == {job: "succeeded", later: "succeeded"}  # the job in memory was written again


def test_a_database_locked_by_another_process_keeps_the_job_known_and_writes_it_when_the_lock_clears(service):
    """Item 8: a running job's update failed under another process's write lock, and GET answered 404 ("it never
    existed") though the PNG was on disk and the row said running."""
    c, data = service()
    # holds the write lock until told (a line on stdin), at most 60 s
    holder_code = ("import select, sqlite3, sys; db = sqlite3.connect(sys.argv[1], isolation_level=None); "
                   "db.execute('BEGIN IMMEDIATE'); print('locked', flush=True); select.select([sys.stdin], [], [], 60)")
    with StepDelay(c, 0.3):
        job = submit(c, num_inference_steps="4")
        wait_until(lambda: status(c, job) == "running", timeout=30)
        holder = subprocess.Popen([sys.executable, "-c", holder_code, str(data / "jobs.sqlite3")],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "locked"
            wait_until(lambda: status(c, job) == "succeeded", timeout=30)
            ready = wait_until(lambda: (r := c.get("/ready")).status_code == 503 and r, timeout=10)
            assert ready.json()["status"] == "storage_unavailable" and "locked" in ready.json()["reason"]
            assert c.get(f"/api/jobs/{job}/image").status_code == 200
            refused = c.post("/api/jobs", data=TINY)  # a new job cannot be written: refused, not lost
            assert lock_held_elsewhere(data), "the holder lost its lock: the test's premise, not the service"
            assert refused.status_code == 503 and refused.json()["error"]["type"] == "storage_unavailable"
            assert int(refused.headers["retry-after"]) >= 1
            assert rows_on_disk(data)[job] == "running"  # not written yet...
        finally:
            holder.communicate("release\n", timeout=30)
    wait_until(lambda: c.get("/ready").status_code == 200, timeout=10)
    assert rows_on_disk(data)[job] == "succeeded"  # ...written once the lock cleared
    assert c.app.state.jobs.live_count() == 0 and status(c, job) == "succeeded"


class FullDisk:
    """``open`` for the first job image temp file written: half of the bytes land, then ENOSPC (a full disk)."""

    def __init__(self, real) -> None:
        self.real, self.fired = real, False

    def __call__(self, file, mode="r", *args, **kwargs):
        fh = self.real(file, mode, *args, **kwargs)
        if self.fired or "w" not in mode or not str(file).endswith(".tmp"):
            return fh
        self.fired = True
        return _FailingWrite(fh, str(file))


class _FailingWrite:
    def __init__(self, fh, name: str) -> None:
        self.fh, self.name = fh, name

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.fh.close()

    def write(self, data) -> int:
        self.fh.write(bytes(data)[: len(data) // 2])
        self.fh.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)

    def __getattr__(self, name):
        return getattr(self.fh, name)


def test_a_full_disk_fails_that_job_clearly_leaves_no_temp_file_and_the_next_job_works(service, monkeypatch):
    """Item 8 (and 15): after ENOSPC a partial images/<id>.tmp stayed, every later job failed until a restart, and
    the message named the server's path."""
    c, data = service()
    full = FullDisk(builtins.open)
    monkeypatch.setattr(builtins, "open", full)
    monkeypatch.setattr(io, "open", full)
    job = submit(c)
    failed = wait_until(lambda: (j := c.get(f"/api/jobs/{job}").json())["status"] == "failed" and j, timeout=60)
    assert full.fired
    error = failed["error"]
    assert error["type"] == "storage_unavailable" and "No space left on device" in error["message"]
    assert str(data) not in error["message"] and "/" not in error["message"].split("(")[-1]
    assert list((data / "images").glob("*.tmp")) == []
    wait_until(lambda: c.get("/ready").status_code == 200, timeout=10)  # space "returned": the fault clears
    after = run_job(c)
    assert c.get(f"/api/jobs/{after}/image").status_code == 200


def test_a_damaged_image_file_is_an_error_naming_the_job_not_a_200(service, caplog):
    """Item 16: a PNG changed on disk was served with 200."""
    c, data = service()
    job = run_job(c)
    path = data / "images" / f"{job}.png"
    png = bytearray(path.read_bytes())
    png[len(png) // 2] ^= 0xFF
    path.write_bytes(bytes(png))
    r = c.get(f"/api/jobs/{job}/image")
    assert r.status_code == 500 and r.json()["error"]["type"] == "image_corrupt" and job in r.json()["error"]["message"]
    assert any(job in r.getMessage() and "sha256" in r.getMessage() for r in caplog.records
               if r.levelno == logging.ERROR)


def test_a_database_deleted_while_running_is_recreated_and_every_job_survives_a_restart(service):
    """Item 17: after the database file was deleted, the service went on writing into the deleted file and the
    jobs it accepted (202) were gone at the next start."""
    c, data = service()
    before = run_job(c)
    for suffix in ("", "-wal", "-shm"):
        (data / f"jobs.sqlite3{suffix}").unlink(missing_ok=True)
    after = submit(c)
    assert {before, after} <= set(rows_on_disk(data))  # on disk at once, as a 202 promises
    wait_until(lambda: status(c, after) == "succeeded", timeout=60)
    c.__exit__(None, None, None)
    again, _ = service(data)  # the next start on the same folder
    assert status(again, before) == status(again, after) == "succeeded"
    assert again.get(f"/api/jobs/{after}/image").status_code == 200


def test_a_finished_job_that_cannot_be_read_is_503_never_404(service, monkeypatch):
    """Item 8: reads that cannot be served answer 503 storage_unavailable with Retry-After (the job may exist).
    Here the database is damaged and a new one cannot be started (as in a folder that cannot be written)."""
    c, data = service()
    job = run_job(c)

    def cannot_replace(self, why, detail):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(JobDatabase, "replace", cannot_replace)
    overwrite_with_random_bytes(data)
    r = c.get(f"/api/jobs/{job}")
    assert r.status_code == 503 and r.json()["error"]["type"] == "storage_unavailable"
    assert "retry" in r.json()["error"]["message"] and int(r.headers["retry-after"]) >= 1
    ready = c.get("/ready")
    assert ready.status_code == 503 and "damaged" in ready.json()["reason"]
    monkeypatch.undo()  # the folder can be written again: the writer thread's next try repairs the store
    wait_until(lambda: c.get("/ready").status_code == 200, timeout=10)
    # a definite answer again: kept (copied from what the connection could still read) or honestly forgotten
    assert c.get(f"/api/jobs/{job}").status_code in (200, 404)
    run_job(c)


def test_a_dead_worker_thread_makes_ready_503_and_answers_waiting_requests_at_once(service):
    """Item 1, generally: a worker thread that stops (any exception) is said by /ready, and nothing waits for it."""
    c, _ = service()
    with StepDelay(c, 0.3):
        job = submit(c, num_inference_steps="6")
        wait_until(lambda: status(c, job) == "running", timeout=30)
        assert c.post("/_test/kill-worker").json()["raised_in"] == 1
        ready = wait_until(lambda: (r := c.get("/ready")).status_code == 503 and r, timeout=10)
    assert ready.json()["status"] == "failed" and "InjectedCrash" in ready.json()["reason"]
    t0 = time.monotonic()
    r = c.post("/api/generate-image", data=TINY)
    assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready" and time.monotonic() - t0 < 5
    assert c.get(f"/api/jobs/{job}").json()["status"] == "queued"  # kept: it runs after the restart
