"""The durable job store (app/jobs/): what is on disk, what is forgotten when, and what runs again after a start.

The restart of a real server (queued and interrupted jobs run again with the same pixels, finished images stay
downloadable) is in tests/test_shutdown.py; here the store is driven directly or through an in-process app.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.jobs import JobStore, pending_jobs
from app.jobs.job import Job
from app.jobs.retention import to_remove
from app.main import create_app
from pipelines.types import GenerationRequest
from tests.conftest import make_settings
from tests.http_support import wait_until

TINY = {"prompt": "d", "width": "32", "height": "32", "num_inference_steps": "1"}


@pytest.fixture()
def app_client(engine):
    def build(**overrides):
        settings = make_settings(**overrides)
        return TestClient(create_app(settings, engine=engine)), settings
    return build


def run_job(c, **fields) -> str:
    job_id = c.post("/api/jobs", data={**TINY, **fields}).json()["id"]
    wait_until(lambda: c.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded", timeout=60)
    wait_until(lambda: c.app.state.jobs.live(job_id) is None, timeout=5)  # its end written, retention applied
    return job_id


def a_job(seed: int = 1) -> Job:
    req = GenerationRequest(prompt="p", width=32, height=32, num_inference_steps=1, seed=seed)
    return Job(request=req, kind="job", deadline=time.monotonic() + 60, total=1)


def test_finished_jobs_hold_no_png_in_memory_and_their_images_are_files(app_client):
    client, settings = app_client()
    with client as c:
        ids = [run_job(c) for _ in range(4)]
        store = c.app.state.jobs
        # nothing in memory once the finish is recorded (a moment after the status flips): rows and files only
        wait_until(lambda: store.live_count() == 0, timeout=5)
        assert sorted(p.stem for p in (settings.data_dir / "images").iterdir()) == sorted(ids)
        assert store.kept_bytes() == sum((settings.data_dir / "images" / f"{i}.png").stat().st_size for i in ids)
        for job_id in ids:
            got = store.get(job_id)
            assert not isinstance(got, Job)  # a row read back, not a Job holding bytes
            assert c.get(f"/api/jobs/{job_id}/image").content == (settings.data_dir / "images" / f"{job_id}.png"
                                                                  ).read_bytes()


def test_memory_does_not_grow_with_retained_jobs(app_client):
    """Python-heap bytes still allocated after 8 finished 256x256 jobs (tracemalloc: torch's own buffers are not
    counted, so the allocator noise of image generation does not hide a PNG kept in memory)."""
    import gc
    import tracemalloc

    client, settings = app_client()
    with client as c:
        run_job(c, width="256", height="256")  # warm-up: first-call caches
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            ids = [run_job(c, width="256", height="256", seed=str(i)) for i in range(8)]
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        png_bytes = sum((settings.data_dir / "images" / f"{i}.png").stat().st_size for i in ids)
    assert png_bytes > 8 * 100_000  # noise-like 256x256 PNGs: ~190 kB each
    assert grown < png_bytes / 4, f"Python heap grew {grown} bytes with {png_bytes} bytes of PNGs retained"


def test_finished_jobs_beyond_the_byte_bound_are_removed_oldest_first(app_client):
    client, settings = app_client(max_jobs_bytes=1)  # room for nothing: only the newest is kept
    with client as c:
        first, second = run_job(c), run_job(c)
        assert c.get(f"/api/jobs/{first}").status_code == 404
        assert c.get(f"/api/jobs/{first}/image").status_code == 404
        assert c.get(f"/api/jobs/{second}/image").status_code == 200
        assert [p.stem for p in (settings.data_dir / "images").iterdir()] == [second]


def test_retention_keeps_the_newest_within_count_and_bytes():
    rows = [{"id": i, "finished_at": 100.0 - i, "image_bytes": 10} for i in range(5)]  # newest first
    ids = lambda doomed: [r["id"] for r in doomed]  # noqa: E731
    assert ids(to_remove(rows, now=100, ttl_s=60, max_kept=3, max_bytes=1000)) == [3, 4]
    assert ids(to_remove(rows, now=100, ttl_s=60, max_kept=10, max_bytes=25)) == [2, 3, 4]
    assert ids(to_remove(rows, now=100, ttl_s=2.5, max_kept=10, max_bytes=1000)) == [3, 4]
    # oldest first: once an older job does not fit, no even older one is kept (even if smaller)
    mixed = [{"id": 0, "finished_at": 3, "image_bytes": 10}, {"id": 1, "finished_at": 2, "image_bytes": 50},
             {"id": 2, "finished_at": 1, "image_bytes": 1}]
    assert ids(to_remove(mixed, now=3, ttl_s=60, max_kept=10, max_bytes=30)) == [1, 2]


def test_finished_jobs_and_their_images_survive_a_restart_of_the_app(app_client, engine):
    client, settings = app_client()
    with client as c:
        job_id = run_job(c)
        png = c.get(f"/api/jobs/{job_id}/image").content
        before = c.get(f"/api/jobs/{job_id}").json()
    again = TestClient(create_app(settings, engine=engine))
    with again as c2:
        assert c2.get(f"/api/jobs/{job_id}").json() == before
        img = c2.get(f"/api/jobs/{job_id}/image")
        assert img.status_code == 200 and img.content == png and img.headers["x-job-id"] == job_id


def test_unfinished_jobs_come_back_in_submission_order_with_their_seed(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    store = JobStore.open(settings)
    jobs = [a_job(seed) for seed in (11, 12, 13)]
    for job in jobs:
        store.accepted(job)
    jobs[0].started_at = time.time()
    store.started(jobs[0])  # the service went down while it ran
    store.close()

    store = JobStore.open(settings)
    try:
        back = pending_jobs(store, request_timeout_s=60)
        assert [j.id for j in back] == [j.id for j in jobs]
        assert [j.request.seed for j in back] == [11, 12, 13] and all(j.status == "queued" for j in back)
        assert back[0].attempts == 1 and store.get(jobs[0].id) is back[0]
    finally:
        store.close()


def test_a_job_interrupted_three_times_fails_instead_of_running_again(tmp_path):
    settings = make_settings(data_dir=tmp_path)
    job = a_job()
    for attempt in range(3):
        store = JobStore.open(settings)
        if attempt == 0:
            store.accepted(job)
        else:
            job = pending_jobs(store, request_timeout_s=60)[0]
        job.started_at = time.time()
        store.started(job)
        store.close()
    store = JobStore.open(settings)
    try:
        assert pending_jobs(store, request_timeout_s=60) == []
        failed = store.get(job.id).to_dict()
        assert failed["status"] == "failed" and failed["error"]["type"] == "interrupted"
        assert "3 times" in failed["error"]["message"]
    finally:
        store.close()


def test_a_job_with_several_loras_comes_back_with_the_same_loras(tmp_path):
    """JSON turns the request's (name, scale) tuples into lists; the job that runs again must hold the same."""
    settings = make_settings(data_dir=tmp_path)
    store = JobStore.open(settings)
    job = Job(request=GenerationRequest(prompt="p", seed=5, loras=(("host_person", 0.5), ("film_look", 0.25))),
              kind="job", deadline=time.monotonic() + 60, total=2)
    store.accepted(job)
    store.close()
    store = JobStore.open(settings)
    try:
        (back,) = pending_jobs(store, request_timeout_s=60)
        assert back.request == job.request  # frozen dataclass equality: tuples of (str, float), same order
    finally:
        store.close()
