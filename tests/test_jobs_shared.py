"""Several processes on one data folder (issue 21: a Ray rolling update starts the next ingress while the previous
one drains, and failed on the folder lock): each runs only the jobs it holds, the jobs of a process that is gone
(or that let them go at its shutdown) are taken over exactly once, and any of them answers for any job.

The store is driven directly for the rules (two stores in this process are two owners, a child process that
exits without closing is a crash); two real ``flux-service serve`` processes share one folder for the whole path.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time

from app.jobs import JobStore, pending_jobs
from app.jobs.job import Job
from app.jobs.remote import RemoteJob
from app.jobs.sharing import cancel_elsewhere
from pipelines.errors import Cancelled
from pipelines.types import GenerationRequest
from tests.conftest import make_settings
from tests.http_support import ROOT, SMALL, LiveServer, read_events, wait_until


def a_job(seed: int = 1) -> Job:
    req = GenerationRequest(prompt="p", width=32, height=32, num_inference_steps=4, seed=seed)
    return Job(request=req, kind="job", deadline=time.monotonic() + 60, total=4)


def test_a_second_store_on_the_folder_opens_and_takes_none_of_the_first_ones_jobs(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    first = JobStore.open(settings)
    second = JobStore.open(settings)  # was: ConfigError "the data folder ... is in use by another process"
    try:
        jobs = [a_job(s) for s in (1, 2)]
        for job in jobs:
            first.accepted(job)
        jobs[0].started_at, jobs[0].replica = time.time(), "local"
        first.started(jobs[0])
        jobs[0].step, jobs[0].preview = 4, {"step": 2, "total": 4, "image": "data:,"}
        first.progressed(jobs[0])
        assert pending_jobs(second, request_timeout_s=60) == []  # its owner is alive: not taken
        seen = second.get(jobs[0].id)
        assert isinstance(seen, RemoteJob) and seen.owner == first.owner
        assert (seen.status, seen.step, seen.replica, seen.preview["step"]) == ("running", 4, "local", 2)
        assert seen.to_dict()["seed"] == 1 and second.get(jobs[1].id).to_dict()["status"] == "queued"
    finally:
        first.close()  # lets go of both (a clean stop of the first process)
    try:
        back = pending_jobs(second, request_timeout_s=60)
        assert [j.id for j in back] == [j.id for j in jobs] and back[0].attempts == 1  # it was running: re-run
        assert pending_jobs(second, request_timeout_s=60) == []  # taken once
        assert second.get(jobs[0].id) is back[0]
    finally:
        second.close()


def test_the_jobs_of_a_process_that_died_are_taken_over_and_a_live_owner_is_asked_to_cancel(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    crash = (f"import os, sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
             "from app.jobs import JobStore\nfrom tests.conftest import make_settings\n"
             "from tests.test_jobs_shared import a_job\n"
             f"s = JobStore.open(make_settings(data_dir={str(tmp_path)!r}))\n"
             "j = a_job(7); s.accepted(j); j.started_at = time.time(); s.started(j)\n"
             "print(j.id, flush=True); os._exit(0)\n")  # no close: the kernel drops its lock, the row keeps it
    out = subprocess.run([sys.executable, "-c", crash], capture_output=True, text=True, timeout=120, cwd=ROOT)
    dead_id = out.stdout.strip()
    assert len(dead_id) == 32, out.stderr
    live = JobStore.open(settings)
    other = JobStore.open(settings)
    try:
        mine = a_job(8)
        live.accepted(mine)
        (taken,) = pending_jobs(other, request_timeout_s=60)  # the dead one's only, and as an interrupted run
        assert taken.id == dead_id and taken.request.seed == 7 and taken.attempts == 1

        cancel_elsewhere(other, other.get(mine.id), Cancelled("cancelled by the client (DELETE)"))
        assert live.cancel_requests() == [(mine.id, "cancelled by the client (DELETE)")]
        assert not live.get(mine.id).done  # only its owner stops it (app/jobs/sharing.py does, every 0.5 s)
    finally:
        live.close()
    try:
        let_go = other.get(mine.id)  # let go at close and nobody took it yet: cancelled here, at once
        cancel_elsewhere(other, let_go, Cancelled("cancelled by the client (DELETE)"))
        done = other.get(mine.id).to_dict()
        assert done["status"] == "cancelled" and done["error"]["type"] == "cancelled"
    finally:
        other.close()


def test_a_job_store_written_by_the_previous_version_is_upgraded_and_its_jobs_resume(tmp_path):
    db = sqlite3.connect(tmp_path / "jobs.sqlite3")
    db.executescript("""
        CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, status TEXT NOT NULL,
            request TEXT NOT NULL, total INTEGER NOT NULL, adapter TEXT, lora_scale REAL NOT NULL,
            created_at REAL NOT NULL, started_at REAL, finished_at REAL, attempts INTEGER NOT NULL DEFAULT 0,
            record TEXT, image TEXT, image_bytes INTEGER NOT NULL DEFAULT 0);
        PRAGMA user_version=1;""")
    db.execute("INSERT INTO jobs (id, status, request, total, lora_scale, created_at) VALUES (?, 'queued', ?, 2, 0, ?)",
               ("a" * 32, json.dumps({"prompt": "old", "seed": 3}), time.time()))
    db.commit()
    db.close()
    store = JobStore.open(make_settings(data_dir=tmp_path))
    try:
        (job,) = pending_jobs(store, request_timeout_s=60)
        assert job.id == "a" * 32 and job.request.seed == 3
    finally:
        store.close()


def _events(url: str, job_id: str, out: list) -> threading.Thread:
    t = threading.Thread(target=read_events, args=(f"{url}/api/jobs/{job_id}/events", out, 60))
    t.start()
    return t


def test_two_services_on_one_folder_answer_for_each_others_jobs_and_take_over_when_one_stops():
    a = LiveServer(FLUX_SHUTDOWN_GRACE_S="1")
    b = LiveServer(data_dir=a.data_dir)  # was: start-up failed, "in use by another flux-service process"
    try:
        with a.client() as ca, b.client() as cb:
            ca.post("/_test/step-delay", json={"seconds": 0.15}).raise_for_status()
            running = ca.post("/api/jobs", data={"prompt": "r", "seed": "1", **SMALL, "num_inference_steps": "12"}
                              ).json()["id"]
            doomed = ca.post("/api/jobs", data={"prompt": "d", "seed": "2", **SMALL}).json()["id"]
            events: list = []
            reader = _events(b.url, running, events)  # the stream is on B, the job runs on A
            cancelled = cb.delete(f"/api/jobs/{doomed}").json()
            assert cancelled["status"] == "cancelled" and cancelled["error"]["type"] == "cancelled"
            reader.join(timeout=60)
            names = [n for n, _ in events]
            assert names[-1] == "succeeded" and "running" in names, names
            steps = [d["step"] for n, d in events if n == "progress"]
            assert steps == sorted(steps) and steps[-1] == 12 and len(steps) >= 2, steps
            assert cb.get(f"/api/jobs/{running}/image").content == ca.get(f"/api/jobs/{running}/image").content

            ca.post("/_test/step-delay", json={"seconds": 0.3}).raise_for_status()
            again = ca.post("/api/jobs", data={"prompt": "k2", "seed": "4", **SMALL, "num_inference_steps": "12"}
                            ).json()["id"]  # runs on A past its 1 s grace: A keeps it for the next owner
            kept = ca.post("/api/jobs", data={"prompt": "k", "seed": "3", **SMALL}).json()["id"]  # queued on A
            wait_until(lambda: ca.get(f"/api/jobs/{again}").json()["step"] >= 1)
            a.terminate()
            a.proc.wait(timeout=30)
            for job_id in (kept, again):  # B takes both over (within ~2 s) and makes them
                done = wait_until(lambda: (j := cb.get(f"/api/jobs/{job_id}").json())["status"] == "succeeded"
                                  and j, timeout=60)
                assert done["id"] == job_id
            assert "job store: resuming" in b.log.read_text()
    finally:
        a.stop()
        b.stop()
