"""The app around the endpoint: API key, CORS, deadline, readiness, task list, offline /docs (TestClient)."""

from __future__ import annotations

import re
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings
from tests.hooks import hooked
from tests.http_support import SMALL


@pytest.fixture()
def make_client(engine):
    clients = []

    def build(**overrides):
        c = TestClient(hooked(create_app(make_settings(**overrides), engine=engine)))
        c.__enter__()
        clients.append(c)
        return c

    yield build
    for c in clients:
        c.__exit__(None, None, None)


def test_api_key_required_on_api_routes_when_set(make_client):
    c = make_client(api_key="s3cret")
    r = c.post("/api/generate-image", data={"prompt": "p", **SMALL})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["type"] == "unauthorized"
    assert c.get("/api/tasks").status_code == 401
    assert c.get("/api/jobs/x").status_code == 401


def test_wrong_api_key_is_401(make_client):
    c = make_client(api_key="s3cret")
    r = c.get("/api/tasks", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["message"] == "the API key is not valid"


def test_right_api_key_is_accepted(make_client):
    c = make_client(api_key="s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    assert c.get("/api/tasks", headers=auth).status_code == 200
    assert c.post("/api/generate-image", data={"prompt": "p", **SMALL}, headers=auth).status_code == 200


def test_health_ready_and_docs_need_no_api_key(make_client):
    c = make_client(api_key="s3cret")
    assert c.get("/health").status_code == 200
    assert c.get("/ready").status_code == 200
    assert c.get("/docs").status_code == 200


def test_cors_allows_configured_origin_and_exposes_result_headers(make_client):
    c = make_client(cors_origins=["http://studio.example"])
    r = c.post("/api/generate-image", data={"prompt": "p", **SMALL}, headers={"Origin": "http://studio.example"})
    assert r.headers["access-control-allow-origin"] == "http://studio.example"
    exposed = r.headers["access-control-expose-headers"]
    for name in ("X-Seed", "X-Task", "X-Adapter", "X-Lora-Scale", "X-Demo-Model", "X-Prompt-Warnings"):
        assert name in exposed
    pre = c.options("/api/jobs", headers={"Origin": "http://studio.example", "Access-Control-Request-Method": "POST",
                                          "Access-Control-Request-Headers": "authorization"})
    assert pre.status_code == 200


def test_cors_refuses_other_origins(make_client):
    c = make_client(cors_origins=["http://studio.example"])
    r = c.get("/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_deadline_exceeded_is_504_and_the_work_is_stopped(make_client):
    c = make_client(request_timeout_s=1.0)
    c.post("/_test/step-delay", json={"seconds": 0.3})
    started = time.monotonic()
    r = c.post("/api/generate-image", data={"prompt": "slow", "width": "32", "height": "32",
                                            "num_inference_steps": "20"})
    assert r.status_code == 504
    assert r.json()["error"]["type"] == "deadline_exceeded"
    assert time.monotonic() - started < 3
    worker = c.app.state.worker
    deadline = time.monotonic() + 3
    while worker.busy() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not worker.busy()


def test_ready_is_503_before_the_model_is_loaded(engine):
    app = create_app(make_settings(), engine=engine)
    c = TestClient(app)  # no lifespan: the engine is not attached yet
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "loading"
    assert c.get("/health").json() == {"status": "ok"}
    r = c.post("/api/generate-image", data={"prompt": "p"})
    assert r.status_code == 503 and r.json()["error"]["type"] == "not_ready"


def test_ready_is_503_while_draining(make_client):
    c = make_client()
    c.app.state.worker.drain(0)
    r = c.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "draining"
    r = c.post("/api/generate-image", data={"prompt": "p", **SMALL})
    assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]


def test_tasks_lists_tasks_model_and_limits(make_client):
    body = make_client().get("/api/tasks").json()
    assert body["demo"] is True and body["model"] == "demo"
    names = {t["name"]: t for t in body["tasks"]}
    assert names["host_face"]["adapter_name"] == "host_person" and names["host_face"]["lora_alpha"] == 0.7
    assert names["science_background"]["adapter_name"] is None
    assert body["limits"]["lora_alpha"] == [0.0, 2.0] and body["limits"]["min_size"] == 16
    assert "max_steps" in body["limits"] and "max_prompt_chars" in body["limits"]
    assert "lora" not in names["host_face"]  # no server paths leak


def test_docs_page_and_its_assets_reference_no_external_host(make_client):
    c = make_client()
    html = c.get("/docs").text
    assert "SwaggerUIBundle" in html
    urls = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    assert urls and all(u.startswith("/") for u in urls), urls
    assert "http://" not in html and "https://" not in html
    for u in urls:
        assert c.get(u).status_code == 200, u


def test_openapi_documents_the_json_body_and_says_the_forms_take_the_same_fields(make_client):
    """JSON only in the schema (tests/test_http_contract.py says why); the forms are described in prose."""
    spec = make_client().get("/openapi.json").json()
    content = spec["paths"]["/api/generate-image"]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json"}
    assert "multipart form" in spec["info"]["description"]
    assert "prompt" in spec["components"]["schemas"]["GenerateParams"]["required"]


def test_test_hooks_are_absent_from_the_product_app(engine):
    with TestClient(create_app(make_settings(), engine=engine)) as c:
        assert c.post("/_test/fault", json={"kind": "oom"}).status_code == 404


def test_root_serves_the_web_page_and_its_assets(make_client):
    c = make_client()
    page = c.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text):
        assert c.get(asset).status_code == 200, asset


def test_a_slow_prompt_stage_does_not_stall_the_other_requests(make_client, engine, monkeypatch):
    """A translation model (``models/translator``) takes hundreds of milliseconds per new prompt on a CPU. The
    prompt stage runs while a request is planned; planned on the event loop, it stalled every other request
    (``/health``, ``/ready``, event streams) meanwhile. Here the stage blocks until the test lets it go: with
    planning off the loop, ``/health`` answers in the meantime."""
    import threading

    c = make_client()
    entered, release = threading.Event(), threading.Event()
    apply = engine.prompt_stage.apply

    def slow_apply(prompt, mode):
        if prompt == "slow to translate":
            entered.set()
            release.wait(30)
        return apply(prompt, mode)

    monkeypatch.setattr(engine.prompt_stage, "apply", slow_apply)
    posted: dict = {}
    poster = threading.Thread(target=lambda: posted.update(r=c.post("/api/jobs", data={"prompt": "slow to translate",
                                                                                       **SMALL})))
    poster.start()
    try:
        assert entered.wait(30), "the job was never planned"
        health: dict = {}
        getter = threading.Thread(target=lambda: health.update(r=c.get("/health")), daemon=True)
        getter.start()
        getter.join(10)
        answered_meanwhile = "r" in health
    finally:
        release.set()
        poster.join(60)
    assert answered_meanwhile, "/health waited for another request's prompt stage"
    assert health["r"].status_code == 200
    assert posted["r"].status_code == 202, posted["r"].text
