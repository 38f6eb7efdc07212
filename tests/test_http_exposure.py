"""What a web page or a client can reach (issue 8 item 8), against a real uvicorn server.

* A plain cross-origin form POST (``Origin: http://evil.example``) ran a whole generation: now 403 before
  any work; curl (no ``Origin``), our own page (same origin) and ``FLUX_CORS_ORIGINS`` origins still work.
* With ``FLUX_MODEL_PATH`` set, its absolute path appeared in ``/api/tasks``, job info and PNG metadata:
  now clients see it relative to the models folder.
"""

from __future__ import annotations

import json
import time

import pytest

from pipelines.model_source import ModelSource
from tests.hardening_support import ALLOWED_ORIGIN as ALLOWED
from tests.hardening_support import MODEL_LABEL, generations, hardened_server, user_models_dir
from tests.http_support import SMALL, SMALL_JSON, png_info


@pytest.fixture(scope="module")
def models_dir():
    return user_models_dir()


@pytest.fixture(scope="module")
def server():
    return hardened_server()


# ---------------------------------------------------------------- Origin
def test_cross_origin_form_post_is_refused_with_403_before_any_work(client):
    before = generations(client)
    r = client.post("/api/generate-image", data={"prompt": "csrf", **SMALL},
                    headers={"Origin": "http://evil.example"})
    assert r.status_code == 403
    err = r.json()["error"]
    assert err["type"] == "forbidden_origin" and "http://evil.example" in err["message"]
    assert "FLUX_CORS_ORIGINS" in err["message"]
    assert "access-control-allow-origin" not in r.headers
    assert generations(client) == before


def test_cross_origin_job_submission_and_null_origin_are_refused(client):
    for origin in ("http://evil.example", "null", "http://127.0.0.1.evil.example"):
        r = client.post("/api/jobs", json={"prompt": "csrf", **SMALL_JSON}, headers={"Origin": origin})
        assert r.status_code == 403, origin


def test_preflight_from_a_refused_origin_is_403(client):
    r = client.options("/api/generate-image", headers={"Origin": "http://evil.example",
                                                       "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and r.json()["error"]["type"] == "forbidden_origin"


def test_preflight_from_an_allowed_origin_is_answered_by_cors(client):
    r = client.options("/api/generate-image", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST",
                                                       "Access-Control-Request-Headers": "content-type"})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ALLOWED


def test_allowed_origin_same_origin_and_no_origin_all_generate(client, server):
    for headers in ({"Origin": ALLOWED}, {"Origin": server.url}, {}):
        r = client.post("/api/generate-image", data={"prompt": "ok", "seed": "1", **SMALL}, headers=headers)
        assert r.status_code == 200, (headers, r.text)
    same = client.post("/api/generate-image", data={"prompt": "ok", **SMALL},
                       headers={"Origin": server.url.replace("127.0.0.1", "localhost"), "Host": f"localhost:{server.port}"})
    assert same.status_code == 200  # the page opened as http://localhost:PORT


def test_same_host_on_another_port_is_another_origin(client, server):
    r = client.post("/api/generate-image", data={"prompt": "x", **SMALL},
                    headers={"Origin": f"http://127.0.0.1:{server.port + 1}"})
    assert r.status_code == 403


# ---------------------------------------------------------------- model path
def test_model_path_is_relative_to_the_models_folder_everywhere(client, models_dir):
    secret = str(models_dir.parent)
    tasks = client.get("/api/tasks")
    assert tasks.json()["model"] == MODEL_LABEL and tasks.json()["demo"] is False
    assert secret not in tasks.text

    r = client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": "true", "task": "host_face",
                                                 **SMALL})
    assert r.status_code == 200
    _, info = png_info(r.content)
    assert info["model"] == MODEL_LABEL
    assert secret not in json.dumps(info) and secret not in json.dumps(dict(r.headers))

    job = client.post("/api/jobs", json={"prompt": "p", **SMALL_JSON}).json()
    for _ in range(600):
        done = client.get(f"/api/jobs/{job['id']}").json()
        if done["status"] in ("succeeded", "failed"):
            break
        time.sleep(0.1)
    assert done["status"] == "succeeded" and done["info"]["model"] == MODEL_LABEL
    assert secret not in json.dumps(done)
    image = client.get(done["image_url"])
    assert secret not in json.dumps(png_info(image.content)[1])


def test_model_outside_the_models_folder_is_shown_by_its_folder_name(tmp_path):
    source = ModelSource(path=tmp_path / "weights" / "FLUX.1-dev", models_root=tmp_path / "models", demo=False,
                         model_type="flux1")
    assert source.label == "FLUX.1-dev"
    assert ModelSource(tmp_path / "models" / "flux1-dev", tmp_path / "models", False, "flux1").label == "flux1-dev"
    assert ModelSource(tmp_path / "x", tmp_path / "x", True, "flux1").label == "demo"
