"""Ray Serve scale-out (issue 11) on a real local Ray cluster: one start per module, 2 CPU engine replicas.

What a studio relies on when it moves from one process to Ray: the same images at the same seeds, both
replicas used, 503 + Retry-After when the queue is full, jobs with progress, live previews and cancel, the page
and the docs through the Ray ingress, a replica killed mid-job survived (the job is retried once and its event
stream starts over: Ray restarts the replica, the next requests succeed), and replicas that keep only their
most recently used LoRAs. How operators run it (serve deploy, rolling updates, SIGTERM, shared clusters):
tests/test_ray_operations.py.
"""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.http_support import read_events

SMALL = {"width": "64", "height": "64", "num_inference_steps": "2"}


@pytest.fixture(scope="module")
def cluster():
    from tests.ray_support import RayCluster

    c = RayCluster(replicas=2)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def local_engine(cluster):
    """The single-process service's engine, with the same settings as the Ray replicas."""
    from pipelines.engine import FluxEngine

    return FluxEngine.from_settings(cluster.settings)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _step_delay(cluster, seconds: float) -> None:
    r = httpx.post(cluster.url + "/_test/step-delay", json={"seconds": seconds}, timeout=10)
    assert r.status_code == 200, r.text


def _wait_job(cluster, job_id: str, pred, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx.get(f"{cluster.url}/api/jobs/{job_id}", timeout=10).json()
        if pred(job):
            return job
        assert time.monotonic() < deadline, f"job never reached the expected state: {job}"
        time.sleep(0.1)


def test_concurrent_mixed_requests_are_bit_identical_and_use_both_replicas(cluster, local_engine):
    from pipelines.types import GenerationRequest

    cases = [{"seed": s} for s in (1, 2, 3)] + [{"seed": s, "task": "host_face"} for s in (4, 5)] + \
            [{"seed": 6, "task": "host_face", "lora_alpha": 0.8}]

    def call(case):
        form = {"prompt": "科普主持人 studio portrait", **SMALL, **{k: str(v) for k, v in case.items()}}
        if "task" in case:
            form["use_model_manager"] = "true"
        return httpx.post(cluster.url + "/api/generate-image", data=form, timeout=120)

    with ThreadPoolExecutor(len(cases)) as pool:
        responses = list(pool.map(call, cases))
    replicas = set()
    for case, r in zip(cases, responses):
        assert r.status_code == 200, r.text
        assert r.headers["X-Replica"].startswith("SERVE_REPLICA::flux#FluxEngine#")
        replicas.add(r.headers["X-Replica"])
        expected = local_engine.generate(GenerationRequest(prompt="科普主持人 studio portrait", width=64, height=64,
                                                           num_inference_steps=2, **case))
        assert r.headers["X-Seed"] == str(case["seed"])
        assert r.headers["X-Adapter"] == (expected.info.adapter_name or "none")
        assert np.array_equal(_pixels(r.content), np.asarray(expected.image.convert("RGB"))), case
    assert len(replicas) == 2, f"only {replicas} served 6 concurrent requests"
    metrics = httpx.get(cluster.url + "/metrics", timeout=10).text
    for replica in replicas:
        assert f'flux_replica_requests_total{{outcome="succeeded",replica="{replica}"}}' in metrics


def test_full_queue_answers_503_with_retry_after(cluster):
    _step_delay(cluster, 0.4)  # ~1 s per image: 16 at once overflow Ray's queue (FLUX_QUEUE_SIZE=8, 2 running)
    try:
        def call(seed):
            return httpx.post(cluster.url + "/api/generate-image", data={"prompt": "x", "seed": str(seed), **SMALL},
                              timeout=120)

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(call, range(16)))
    finally:
        _step_delay(cluster, 0)
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) >= 8 and codes.count(503) >= 1, codes
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "overloaded", r.text


def test_job_progress_events_and_cancel_through_ray(cluster):
    _step_delay(cluster, 0.3)
    try:
        r = httpx.post(cluster.url + "/api/jobs", data={"prompt": "x", "seed": "7", "width": "64", "height": "64",
                                                         "num_inference_steps": "3"}, timeout=10)
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        events = []
        read_events(f"{cluster.url}/api/jobs/{job_id}/events?preview=true", events, timeout=60)
        names = [n for n, _ in events]
        assert names[-1] == "succeeded", events
        assert [d["step"] for n, d in events if n == "progress"][-1] == 3
        previews = [d for n, d in events if n == "preview"]  # made by the replica, forwarded by the ingress
        assert previews and previews[-1]["image"].startswith("data:image/jpeg;base64,"), names
        assert {d["total"] for d in previews} == {3} and all(max(d["width"], d["height"]) <= 160 for d in previews)
        done = events[-1][1]
        assert done["replica"].startswith("SERVE_REPLICA::flux#FluxEngine#")
        # a reader that connects while the job runs gets a synthesized "running" (no replica); a live one has it
        assert all(d["replica"] == done["replica"] for n, d in events if n == "running" and "replica" in d)
        image = httpx.get(f"{cluster.url}/api/jobs/{job_id}/image", timeout=10)
        assert image.status_code == 200 and image.headers["X-Replica"] == done["replica"]

        r = httpx.post(cluster.url + "/api/jobs", data={"prompt": "x", "seed": "8", "width": "64", "height": "64",
                                                         "num_inference_steps": "20"}, timeout=10)
        job_id = r.json()["id"]
        _wait_job(cluster, job_id, lambda j: j["status"] == "running" and j["step"] >= 1)
        started = time.monotonic()
        cancelled = httpx.delete(f"{cluster.url}/api/jobs/{job_id}", timeout=30).json()
        assert cancelled["status"] == "cancelled", cancelled
        assert cancelled["error"]["type"] == "cancelled" and "DELETE" in cancelled["error"]["message"]
        assert cancelled["step"] < 20 and time.monotonic() - started < 5
    finally:
        _step_delay(cluster, 0)
    # the replica is free again at once: the next request is served
    assert httpx.post(cluster.url + "/api/generate-image", data={"prompt": "x", **SMALL}, timeout=60).status_code == 200


def test_page_and_docs_load_through_the_ray_ingress(cluster):
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(cluster.url + "/")
            page.wait_for_selector("#task option[value=host_face]", state="attached", timeout=30_000)
            page.goto(cluster.url + "/docs")
            page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
            assert "/api/generate-image" in page.content()
            assert not errors, errors
        finally:
            browser.close()


def _cancelled_on_replicas(cluster) -> float:
    lines = httpx.get(cluster.url + "/metrics", timeout=10).text.splitlines()
    return sum(float(x.rsplit(" ", 1)[1]) for x in lines
               if x.startswith('flux_replica_requests_total{outcome="cancelled"'))


def test_client_disconnect_stops_the_work_on_the_replica(cluster):
    before = _cancelled_on_replicas(cluster)
    _step_delay(cluster, 0.3)
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(cluster.url + "/api/generate-image", data={"prompt": "x", "width": "64", "height": "64",
                                                                  "num_inference_steps": "40"},
                       timeout=httpx.Timeout(10, read=1.5))
        deadline = time.monotonic() + 8  # 40 steps would take 12 s; a stopped one ends within a step or two
        while _cancelled_on_replicas(cluster) == before:
            assert time.monotonic() < deadline, "the replica kept generating for a client that had left"
            time.sleep(0.2)
    finally:
        _step_delay(cluster, 0)


def _follow(cluster, job_id: str, events: list) -> None:
    read_events(f"{cluster.url}/api/jobs/{job_id}/events", events, timeout=180)


def test_replicas_killed_mid_request_are_survived(cluster):
    """Both replicas killed while busy: the direct request gets a 503 envelope, the job is retried once and
    succeeds on a replacement, Ray restarts both, the next requests succeed."""
    import ray

    _step_delay(cluster, 0.5)
    try:
        r = httpx.post(cluster.url + "/api/jobs", data={"prompt": "x", "seed": "9", "width": "64", "height": "64",
                                                         "num_inference_steps": "6"}, timeout=10)
        job_id = r.json()["id"]
        events: list = []
        reader = threading.Thread(target=_follow, args=(cluster, job_id, events))
        reader.start()
        job = _wait_job(cluster, job_id, lambda j: j["status"] == "running" and j["replica"] and j["step"] >= 2)
        with ThreadPoolExecutor(1) as pool:
            direct = pool.submit(httpx.post, cluster.url + "/api/generate-image",
                                 data={"prompt": "x", "width": "64", "height": "64", "num_inference_steps": "6"},
                                 timeout=120)
            time.sleep(1.0)  # the other replica (the job's is busy) is now making it
            victims = {job["replica"]} | set(cluster.replica_ids())
            assert len(victims) == 2, victims
            for name in victims:
                ray.kill(ray.get_actor(name, namespace="serve"))
            _step_delay(cluster, 0)
            response = direct.result()
        assert response.status_code == 503, response.text
        assert response.json()["error"]["type"] == "overloaded" and "died" in response.json()["error"]["message"]
        assert int(response.headers["Retry-After"]) >= 1
        done = _wait_job(cluster, job_id, lambda j: j["status"] in ("succeeded", "failed", "cancelled"), 180)
        reader.join(timeout=30)
    finally:
        _step_delay(cluster, 0)
    assert done["status"] == "succeeded", done  # retried once on a live replica: nothing accepted is lost
    assert done["replica"] not in victims
    # the stream says it starts over: queued (retry), a new running on the new replica, progress from the start
    names = [n for n, _ in events]
    retry = next(i for i, (n, d) in enumerate(events) if n == "queued" and d.get("retry"))
    assert "progress" in names[:retry] and names[retry + 1] == "running", names
    assert events[retry + 1][1]["replica"] == done["replica"]
    after = [d["step"] for n, d in events[retry:] if n == "progress"]
    assert after == list(range(7)) and names[-1] == "succeeded", events  # 0: the start, as in a first run
    deadline = time.monotonic() + 180
    while cluster.engine_status() != "HEALTHY":
        assert time.monotonic() < deadline, "Ray did not restart the killed replicas"
        time.sleep(1)
    codes = [httpx.post(cluster.url + "/api/generate-image", data={"prompt": "x", "seed": str(s), **SMALL},
                        timeout=60).status_code for s in range(3)]
    assert codes == [200, 200, 200]
    metrics = httpx.get(cluster.url + "/metrics", timeout=10).text
    for name in victims:
        assert f'flux_replica_requests_total{{outcome="replica_died",replica="{name}"}} 1.0' in metrics


def test_replica_keeps_only_its_most_recent_loras_and_unload_is_exact(local_engine):
    """``ray_max_loras`` relies on ``FluxEngine.unload_adapter``: unloading leaves the base model exact and a
    task whose LoRA was unloaded loads it again and gives the same image."""
    from pipelines.types import GenerationRequest

    base = GenerationRequest(prompt="x", width=64, height=64, num_inference_steps=2, seed=11)
    task = GenerationRequest(prompt="x", task="host_face", width=64, height=64, num_inference_steps=2, seed=11)
    before_base, before_task = local_engine.generate(base).image, local_engine.generate(task).image
    (adapter,) = local_engine.resident_adapters()
    assert local_engine.unload_adapter(adapter.file) is True
    assert local_engine.resident_adapters() == []
    assert np.array_equal(np.asarray(local_engine.generate(base).image), np.asarray(before_base))
    again = local_engine.generate(task)
    assert again.info.adapter_name == adapter.name
    assert np.array_equal(np.asarray(again.image), np.asarray(before_task))
    assert len(local_engine.resident_adapters()) == 1


def test_serve_config_file_is_valid_and_builds_the_app():
    """deploy/serve_config.yaml is what `serve deploy` and KubeRay read: schema-valid, and its import_path
    builds the two deployments with the file's args."""
    from pathlib import Path

    import yaml
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load(
        (Path(__file__).resolve().parent.parent / "deploy" / "serve_config.yaml").read_text()))
    (app_config,) = config.applications
    assert app_config.import_path == "app.ray_serve:build_app"
    from app.ray_serve import build_app

    app = call_user_app_builder_with_args_if_necessary(build_app, app_config.args)
    engine = app._bound_deployment.init_args[0]._bound_deployment
    assert engine.name == "FluxEngine" and engine.num_replicas == app_config.args["replicas"]
    assert engine.max_ongoing_requests == 1
