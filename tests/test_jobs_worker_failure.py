"""A worker thread that dies (issue 17 item 1): the real server says so on /ready, answers waiting requests at
once, exits non-zero so that its supervisor restarts it, and the job it was running runs after the restart.

The thread is stopped by the ``/_test/kill-worker`` hook (an exception no ``except Exception`` catches, raised
inside it while a job runs). What the in-process app does (no server to stop) is in test_jobs_store_faults.py.
"""

from __future__ import annotations

import time

import pytest

from app.jobs.shutdown import FAILURE_EXIT_STATUS
from tests.http_support import SMALL, LiveServer, wait_until


def kill_the_worker_while_a_job_runs(server: LiveServer) -> str:
    with server.client() as c:
        c.post("/_test/step-delay", json={"seconds": 0.3}).raise_for_status()
        job = c.post("/api/jobs", data={"prompt": "survives", "seed": "3", **SMALL, "num_inference_steps": "6"})
        job_id = job.json()["id"]
        wait_until(lambda: c.get(f"/api/jobs/{job_id}").json()["status"] == "running", timeout=30)
        assert c.post("/_test/kill-worker").json()["raised_in"] == 1
    return job_id


def test_flux_service_serve_exits_non_zero_and_the_job_runs_after_the_restart():
    server = LiveServer(cli=True)
    try:
        job_id = kill_the_worker_while_a_job_runs(server)
        failed_at = time.monotonic()
        server.proc.wait(timeout=30)
        assert server.proc.returncode == FAILURE_EXIT_STATUS
        assert time.monotonic() - failed_at < 15
        log = server.log.read_text()
        assert "the worker thread stopped unexpectedly (InjectedCrash" in log and "exit status 70" in log
    finally:
        server.stop()
    again = LiveServer(cli=True, data_dir=server.data_dir)
    try:
        with again.client() as c:
            done = wait_until(lambda: (j := c.get(f"/api/jobs/{job_id}").json())["status"] == "succeeded" and j,
                              timeout=60)
            assert c.get(f"/api/jobs/{job_id}/image").status_code == 200 and done["seed"] == 3
    finally:
        again.stop()


@pytest.mark.parametrize("target", ["tests.hooks:create_app"])
def test_uvicorn_exits_non_zero_and_ready_says_failed_meanwhile(target):
    server = LiveServer(target=target)
    try:
        kill_the_worker_while_a_job_runs(server)
        with server.client() as c:
            try:
                r = c.get("/ready")
                assert r.status_code == 503 and r.json()["status"] == "failed"
            except Exception:  # noqa: BLE001 - the process may already be gone: the exit status below says it all
                pass
        server.proc.wait(timeout=30)
        assert server.proc.returncode == FAILURE_EXIT_STATUS
    finally:
        server.stop()
