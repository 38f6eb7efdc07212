"""One worker, one bounded FIFO queue: overload, disconnects, faults, and a loop that never blocks."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlencode

from tests.http_support import SMALL, StepDelay, drain_jobs, metric, wait_until


def slow_job(client, steps: int = 20) -> str:
    r = client.post("/api/jobs", data={"prompt": "slow", "width": "32", "height": "32",
                                       "num_inference_steps": str(steps)})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_running(client, job_id: str) -> None:
    wait_until(lambda: client.get(f"/api/jobs/{job_id}").json()["status"] == "running", timeout=20)


def metrics(client) -> str:
    return client.get("/metrics").text


def raw_request(server, fields: dict) -> socket.socket:
    """Send a generate-image request on a bare socket, so the test can hang up whenever it wants."""
    body = urlencode(fields).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /api/generate-image HTTP/1.1\r\nHost: localhost\r\n"
                 b"Content-Type: application/x-www-form-urlencoded\r\n"
                 + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return sock


def test_queue_full_answers_503_with_retry_after(client):
    with StepDelay(client, 0.3):
        ids = [slow_job(client)]
        wait_running(client, ids[0])
        ids += [slow_job(client) for _ in range(3)]  # the test server queues 3
        try:
            r = client.post("/api/generate-image", data={"prompt": "one too many", **SMALL})
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            err = r.json()["error"]
            assert err["type"] == "overloaded" and "queue is full" in err["message"]
            assert client.post("/api/jobs", data={"prompt": "also", **SMALL}).status_code == 503
        finally:
            drain_jobs(client, ids)


def test_disconnect_while_queued_drops_the_request(server, client):
    with StepDelay(client, 0.3):
        blocker = slow_job(client)
        wait_running(client, blocker)
        before = metric(metrics(client), "flux_requests_total", endpoint="generate", outcome="cancelled")
        sock = raw_request(server, {"prompt": "queued then gone", **SMALL})
        wait_until(lambda: metric(metrics(client), "flux_queue_depth") == 1)
        sock.close()
        try:
            wait_until(lambda: metric(metrics(client), "flux_queue_depth") == 0, timeout=5)
            after = metric(metrics(client), "flux_requests_total", endpoint="generate", outcome="cancelled")
            assert after == before + 1
            assert client.get(f"/api/jobs/{blocker}").json()["status"] == "running"  # it never ran
        finally:
            drain_jobs(client, [blocker])


def test_disconnect_while_running_stops_at_the_next_step(server, client):
    with StepDelay(client, 0.3):
        before = metric(metrics(client), "flux_requests_total", endpoint="generate", outcome="cancelled")
        sock = raw_request(server, {"prompt": "running then gone", "width": "32", "height": "32",
                                    "num_inference_steps": "30"})  # ~9 s if it were not stopped
        wait_until(lambda: metric(metrics(client), "flux_worker_busy") == 1)
        time.sleep(0.4)
        hung_up = time.monotonic()
        sock.close()
        wait_until(lambda: metric(metrics(client), "flux_worker_busy") == 0, timeout=5)
        assert time.monotonic() - hung_up < 3
        after = metric(metrics(client), "flux_requests_total", endpoint="generate", outcome="cancelled")
        assert after == before + 1


def test_health_answers_while_an_image_is_generating(client):
    with StepDelay(client, 0.3):
        job = slow_job(client, steps=10)
        try:
            wait_running(client, job)
            started = time.monotonic()
            assert client.get("/health").json() == {"status": "ok"}
            assert time.monotonic() - started < 0.5
        finally:
            drain_jobs(client, [job])


def test_injected_out_of_memory_is_503_and_the_next_request_succeeds(client):
    assert client.post("/_test/fault", json={"kind": "oom"}).status_code == 200
    r = client.post("/api/generate-image", data={"prompt": "oom", **SMALL})
    assert r.status_code == 503 and "retry-after" in r.headers
    err = r.json()["error"]
    assert err["type"] == "out_of_memory" and "memory was released" in err["message"]
    ok = client.post("/api/generate-image", data={"prompt": "after oom", **SMALL})
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"


def test_metrics_count_outcomes_generation_time_and_adapter_switches(client):
    client.post("/api/generate-image", data={"prompt": "m", "use_model_manager": "true", "task": "host_face",
                                             **SMALL})
    client.post("/api/generate-image", data={"prompt": "m", **SMALL})
    client.post("/api/generate-image", data={"prompt": "m", "width": "65"})
    text = metrics(client)
    assert metric(text, "flux_requests_total", endpoint="generate", outcome="succeeded") >= 2
    assert metric(text, "flux_requests_total", endpoint="generate", outcome="invalid_request") >= 1
    assert metric(text, "flux_generation_seconds_count") >= 2
    assert metric(text, "flux_queue_wait_seconds_count") >= 2
    assert metric(text, "flux_adapter_switches_total") >= 1
    assert "flux_queue_depth" in text
