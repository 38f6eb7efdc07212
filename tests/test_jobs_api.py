"""/api/jobs: lifecycle, image, cancellation, retention and one FIFO queue shared with direct requests."""

from __future__ import annotations

import threading
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings
from tests.hooks import hooked
from tests.http_support import SMALL, StepDelay, drain_jobs, metric, pixels, png_info, wait_until


def submit(client, **fields) -> dict:
    r = client.post("/api/jobs", data={"prompt": "job", **SMALL, **fields})
    assert r.status_code == 202, r.text
    return r.json()


def wait_status(client, job_id: str, *statuses: str) -> dict:
    return wait_until(lambda: (j := client.get(f"/api/jobs/{job_id}").json())["status"] in statuses and j,
                      timeout=30)


def test_post_gives_202_with_id_queued_status_position_and_location(client):
    r = client.post("/api/jobs", data={"prompt": "job", "seed": "9", **SMALL})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and isinstance(job["position"], int) and job["position"] >= 1
    assert job["seed"] == 9 and job["total"] == 2 and job["image_url"] is None
    assert r.headers["location"] == f"/api/jobs/{job['id']}"
    wait_status(client, job["id"], "succeeded")


def test_seed_is_fixed_at_submission_when_not_given(client):
    job = submit(client)
    assert isinstance(job["seed"], int) and job["seed"] >= 0
    done = wait_status(client, job["id"], "succeeded")
    assert done["info"]["seed"] == job["seed"]


def test_succeeded_job_reports_what_was_used_and_serves_its_png(client):
    job = submit(client, use_model_manager="true", task="host_face", lora_alpha="0.9", prompt="科普主持人")
    assert (job["task"], job["adapter"], job["lora_scale"]) == ("host_face", "host_person", 0.9)
    done = wait_status(client, job["id"], "succeeded")
    assert done["step"] == done["total"] == 2 and done["error"] is None
    assert done["info"]["adapter_name"] == "host_person" and done["info"]["lora_scale"] == 0.9
    assert done["info"]["prompt_original"] == "科普主持人"
    assert done["info"]["prompt"] == "science show host"  # the glossary's English (translate=auto by default)
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    assert done["image_url"] == f"/api/jobs/{job['id']}/image"
    img = client.get(done["image_url"])
    assert img.status_code == 200 and img.headers["x-seed"] == str(job["seed"])
    assert png_info(img.content)[0] == (64, 64)


def test_job_image_matches_the_direct_request_with_the_same_seed(client):
    job = submit(client, seed="77")
    wait_status(client, job["id"], "succeeded")
    direct = client.post("/api/generate-image", data={"prompt": "job", "seed": "77", **SMALL})
    assert pixels(client.get(f"/api/jobs/{job['id']}/image").content) == pixels(direct.content)


def test_image_of_an_unfinished_job_is_409(client):
    with StepDelay(client, 0.3):
        job = submit(client, num_inference_steps="10")
        try:
            r = client.get(f"/api/jobs/{job['id']}/image")
            assert r.status_code == 409 and r.json()["error"]["type"] == "conflict"
        finally:
            drain_jobs(client, [job["id"]])


def test_unknown_job_is_404_saying_it_may_have_expired(client):
    r = client.get("/api/jobs/does-not-exist")
    assert r.status_code == 404
    assert "expired" in r.json()["error"]["message"]
    assert client.delete("/api/jobs/does-not-exist").status_code == 404
    assert client.get("/api/jobs/does-not-exist/image").status_code == 404


def test_failed_job_reports_the_error_envelope(client):
    client.post("/_test/fault", json={"kind": "oom"})
    job = submit(client)
    done = wait_status(client, job["id"], "failed", "succeeded")
    assert done["status"] == "failed"
    assert done["error"]["type"] == "out_of_memory" and done["image_url"] is None
    assert client.get(f"/api/jobs/{job['id']}/image").status_code == 409


def test_delete_queued_job_removes_it_from_the_queue(client):
    with StepDelay(client, 0.3):
        running = submit(client, num_inference_steps="20")
        wait_status(client, running["id"], "running")
        queued = submit(client)
        try:
            r = client.delete(f"/api/jobs/{queued['id']}")
            assert r.status_code == 200
            assert r.json()["status"] == "cancelled" and r.json()["started_at"] is None
            assert metric(client.get("/metrics").text, "flux_queue_depth") == 0
            assert client.get(f"/api/jobs/{running['id']}").json()["status"] == "running"
        finally:
            drain_jobs(client, [running["id"]])


def test_delete_running_job_stops_it_at_the_next_step(client):
    with StepDelay(client, 0.3):
        job = submit(client, num_inference_steps="30")
        wait_until(lambda: client.get(f"/api/jobs/{job['id']}").json()["step"] >= 1, timeout=20)
        started = time.monotonic()
        r = client.delete(f"/api/jobs/{job['id']}")
        assert time.monotonic() - started < 2
        body = r.json()
        assert r.status_code == 200 and body["status"] == "cancelled"
        assert body["step"] < body["total"] and body["image_url"] is None
        assert body["error"]["type"] == "cancelled"


def test_delete_finished_job_leaves_it_unchanged(client):
    job = submit(client)
    wait_status(client, job["id"], "succeeded")
    r = client.delete(f"/api/jobs/{job['id']}")
    assert r.status_code == 200 and r.json()["status"] == "succeeded"


def test_jobs_and_direct_requests_share_one_fifo_queue(server, client):
    with StepDelay(client, 0.15):
        first = submit(client, num_inference_steps="6")
        wait_status(client, first["id"], "running")
        job_b = submit(client, prompt="b")
        seen = {}

        def direct():
            with server.client() as c2:
                r = c2.post("/api/generate-image", data={"prompt": "c", **SMALL})
                seen["status"] = r.status_code
                seen["b"] = c2.get(f"/api/jobs/{job_b['id']}").json()["status"]
                seen["d"] = c2.get(f"/api/jobs/{job_d['id']}").json()["status"]

        t = threading.Thread(target=direct)
        t.start()
        wait_until(lambda: metric(client.get("/metrics").text, "flux_queue_depth") == 2)
        job_d = submit(client, prompt="d")
        assert (job_b["position"], job_d["position"]) == (1, 3)  # the direct request holds place 2
        t.join(timeout=30)
        assert seen == {"status": 200, "b": "succeeded", "d": seen["d"]} and seen["d"] in ("queued", "running")
        wait_status(client, job_d["id"], "succeeded")


@pytest.fixture()
def retention_client(engine):
    def build(**overrides):
        return TestClient(hooked(create_app(make_settings(**overrides), engine=engine)))
    return build


def run_job(c) -> str:
    job_id = c.post("/api/jobs", data={"prompt": "r", "width": "32", "height": "32",
                                       "num_inference_steps": "1"}).json()["id"]
    wait_until(lambda: c.get(f"/api/jobs/{job_id}").json()["status"] == "succeeded", timeout=30)
    return job_id


def test_finished_jobs_are_forgotten_after_the_ttl(retention_client):
    with retention_client(job_ttl_s=0.5) as c:
        job_id = run_job(c)
        time.sleep(0.7)
        r = c.get(f"/api/jobs/{job_id}")
        assert r.status_code == 404 and "expired" in r.json()["error"]["message"]


def test_only_the_newest_finished_jobs_are_kept(retention_client):
    with retention_client(max_jobs_kept=2) as c:
        ids = [run_job(c) for _ in range(3)]
        assert c.get(f"/api/jobs/{ids[0]}").status_code == 404
        assert [c.get(f"/api/jobs/{i}").status_code for i in ids[1:]] == [200, 200]


def test_unfinished_jobs_are_never_forgotten(retention_client):
    with retention_client(job_ttl_s=0.2, max_jobs_kept=1) as c:
        c.post("/_test/step-delay", json={"seconds": 0.3})  # 8 steps: ~2.4 s running, the next one waits
        body = {"prompt": "s", "width": "32", "height": "32", "num_inference_steps": "8"}
        running, queued = (c.post("/api/jobs", data=body).json()["id"] for _ in range(2))
        ids = [running, queued]
        time.sleep(0.6)  # three times the TTL
        assert [c.get(f"/api/jobs/{i}").json()["status"] for i in ids] == ["running", "queued"]
        for job_id in ids:
            c.delete(f"/api/jobs/{job_id}")
