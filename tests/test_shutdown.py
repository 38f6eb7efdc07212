"""SIGTERM against a real uvicorn process: drain at once, finish the running image, keep every accepted job.

Each test starts its own server (a SIGTERM ends it) with a small grace, slows denoising down with the
``step-delay`` test hook so that "running", "queued" and "past the grace" are certain, sends SIGTERM, and
checks what every client got and when the process ended. The restart uses the same data folder.
"""

from __future__ import annotations

import json
import threading
import time

import httpx

from tests.http_support import SMALL, LiveServer, metric, pixels, wait_until

GRACE_S = 6.0


def post_direct(url: str, results: dict, key: str, **fields) -> threading.Thread:
    def run():
        with httpx.Client(base_url=url, timeout=60) as c:
            try:
                results[key] = c.post("/api/generate-image", data={"prompt": key, **SMALL, **fields})
            except httpx.HTTPError as exc:  # the failure the issue reports: a broken connection
                results[key] = exc

    t = threading.Thread(target=run)
    t.start()
    return t


def follow_events(url: str, job_id: str, events: list) -> threading.Thread:
    def run():
        name = None
        try:
            with httpx.Client(base_url=url, timeout=60) as c, c.stream("GET", f"/api/jobs/{job_id}/events") as r:
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: "):
                        events.append((name, json.loads(line[6:])))
        except httpx.HTTPError as exc:
            events.append(("broken", {"error": repr(exc)}))

    t = threading.Thread(target=run)
    t.start()
    return t


def queue_depth(c: httpx.Client) -> float:
    return metric(c.get("/metrics").text, "flux_queue_depth")


def wait_exit(server: LiveServer, started: float, limit_s: float) -> float:
    server.proc.wait(timeout=limit_s + 10)
    return time.monotonic() - started


def test_sigterm_drains_at_once_finishes_the_running_image_and_keeps_queued_jobs():
    server = LiveServer(FLUX_SHUTDOWN_GRACE_S=str(GRACE_S), FLUX_QUEUE_SIZE="4")
    try:
        with server.client() as c:
            finished = c.post("/api/jobs", data={"prompt": "kept", "seed": "5", **SMALL}).json()["id"]
            wait_until(lambda: c.get(f"/api/jobs/{finished}").json()["status"] == "succeeded")
            finished_png = c.get(f"/api/jobs/{finished}/image").content

            c.post("/_test/step-delay", json={"seconds": 0.25}).raise_for_status()
            results: dict = {}
            threads = [post_direct(server.url, results, "running", num_inference_steps="5")]  # ~2 s < grace
            wait_until(lambda: "flux_worker_busy 1.0" in c.get("/metrics").text)
            threads += [post_direct(server.url, results, f"queued{i}") for i in range(2)]
            wait_until(lambda: queue_depth(c) == 2)
            job = c.post("/api/jobs", data={"prompt": "after restart", "seed": "31", **SMALL}).json()
            events: list = []
            threads.append(follow_events(server.url, job["id"], events))
            wait_until(lambda: events)  # the stream is open: it said "queued"

            sigterm_at = time.monotonic()
            server.terminate()
            ready = wait_until(lambda: (r := httpx.get(f"{server.url}/ready", timeout=2)).status_code != 200 and r,
                               timeout=2)
            refused = c.post("/api/jobs", data={"prompt": "too late", **SMALL})
            for t in threads[1:]:
                t.join(timeout=3)
            queued_answered_s = time.monotonic() - sigterm_at
            for t in threads:
                t.join(timeout=GRACE_S + 5)
            took = wait_exit(server, sigterm_at, GRACE_S + 5)

        assert ready.status_code == 503 and ready.json()["status"] == "draining"
        assert refused.status_code == 503 and refused.json()["error"]["type"] == "shutting_down"
        for key in ("queued0", "queued1"):
            r = results[key]
            assert isinstance(r, httpx.Response), r
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "shutting_down"
        assert queued_answered_s < 3  # at once, not after the running image
        running = results["running"]
        assert isinstance(running, httpx.Response) and running.status_code == 200, running
        assert running.headers["x-steps"] == "5" and running.headers["content-type"] == "image/png"
        names = [n for n, _ in events]
        assert names[0] == "queued" and names[-1] == "shutdown" and "broken" not in names
        assert events[-1][1]["id"] == job["id"] and "next start" in events[-1][1]["message"]
        assert took < GRACE_S + 5, f"exited {took:.1f}s after SIGTERM"
        log = server.log.read_text()
        assert "Traceback" not in log and "Application shutdown complete" in log
    finally:
        server.stop()

    again = LiveServer(data_dir=server.data_dir)
    try:
        with again.client() as c:
            done = wait_until(lambda: (j := c.get(f"/api/jobs/{job['id']}").json())["status"] == "succeeded" and j)
            assert done["seed"] == 31 and done["created_at"] == job["created_at"]
            image = c.get(f"/api/jobs/{job['id']}/image")
            direct = c.post("/api/generate-image", data={"prompt": "after restart", "seed": "31", **SMALL})
            assert image.status_code == 200 and pixels(image.content) == pixels(direct.content)
            kept = c.get(f"/api/jobs/{finished}/image")  # finished before the restart: still downloadable
            assert kept.status_code == 200 and kept.content == finished_png
    finally:
        again.stop()


def test_a_job_still_running_at_the_grace_is_stopped_and_runs_again_after_the_restart():
    grace = 2.0
    server = LiveServer(FLUX_SHUTDOWN_GRACE_S=str(grace))
    try:
        with server.client() as c:
            c.post("/_test/step-delay", json={"seconds": 0.3}).raise_for_status()
            job = c.post("/api/jobs", data={"prompt": "long", "seed": "8", **SMALL,
                                            "num_inference_steps": "12"}).json()  # ~4 s: longer than the grace
            events: list = []
            reader = follow_events(server.url, job["id"], events)
            wait_until(lambda: c.get(f"/api/jobs/{job['id']}").json()["step"] >= 1)
            sigterm_at = time.monotonic()
            server.terminate()
            reader.join(timeout=grace + 5)
            took = wait_exit(server, sigterm_at, grace + 5)
        names = [n for n, _ in events]
        assert names[-1] == "shutdown" and "succeeded" not in names and "broken" not in names
        assert events[-1][1]["status"] == "queued" and "grace" in events[-1][1]["message"]
        assert max(d["step"] for n, d in events if n == "progress") < 12
        assert took < grace + 5, f"exited {took:.1f}s after SIGTERM"
    finally:
        server.stop()

    again = LiveServer(data_dir=server.data_dir)
    try:
        with again.client() as c:
            done = wait_until(lambda: (j := c.get(f"/api/jobs/{job['id']}").json())["status"] == "succeeded" and j)
            assert done["step"] == done["total"] == 12 and done["seed"] == 8
            direct = c.post("/api/generate-image", data={"prompt": "long", "seed": "8", **SMALL,
                                                         "num_inference_steps": "12"})
            assert pixels(c.get(f"/api/jobs/{job['id']}/image").content) == pixels(direct.content)
    finally:
        again.stop()


def test_flux_service_serve_stops_a_direct_request_at_the_grace_with_a_503_envelope():
    grace = 1.0
    server = LiveServer(cli=True, FLUX_SHUTDOWN_GRACE_S=str(grace))  # `flux-service serve`, not plain uvicorn
    try:
        with server.client() as c:
            c.post("/_test/step-delay", json={"seconds": 0.3}).raise_for_status()
            results: dict = {}
            t = post_direct(server.url, results, "long", num_inference_steps="30")
            wait_until(lambda: "flux_worker_busy 1.0" in c.get("/metrics").text)
            sigterm_at = time.monotonic()
            server.terminate()
            t.join(timeout=grace + 5)
            took = wait_exit(server, sigterm_at, grace + 5)
        r = results["long"]
        assert isinstance(r, httpx.Response), r
        assert r.status_code == 503 and r.headers["content-type"] == "application/json"
        assert r.json()["error"]["type"] == "shutting_down" and "grace" in r.json()["error"]["message"]
        assert "retry-after" in r.headers
        assert took < grace + 5, f"exited {took:.1f}s after SIGTERM"
    finally:
        server.stop()
