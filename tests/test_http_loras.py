"""Several LoRAs over HTTP: GET /api/loras, the `loras` field (JSON or a JSON string in a form), metrics."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings
from tests.http_support import SMALL, SMALL_JSON, pixels


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(make_settings(), engine=engine)) as c:
        yield c


def _generate(client, **fields):
    return client.post("/api/generate-image", json={"prompt": "a host", "seed": 3, **SMALL_JSON, **fields})


def test_api_loras_lists_registered_loras_with_hash_rank_and_targets(client):
    body = client.get("/api/loras").json()
    assert body["adapter_strategy"] == "fused" and body["compiled"] is False
    host = {x["name"]: x for x in body["loras"]}["host_person"]
    assert host["rank"] == 4 and len(host["sha256"]) == 64 and host["layers"] > 0
    assert "transformer_blocks.*.attn.to_q" in host["targets"]
    assert host["tasks"] == ["host_face", "character_face"]
    assert host["path"] == "lora/host_person" and not host["file"].startswith("/")


def test_loras_field_sets_strength_by_name_as_json_or_form_string(client):
    as_json = _generate(client, use_model_manager=True, task="host_face",
                        loras=[{"name": "host_person", "scale": 0.9}])
    assert as_json.status_code == 200, as_json.text
    assert json.loads(as_json.headers["x-loras"]) == [{"name": "host_person", "scale": 0.9}]
    assert as_json.headers["x-lora-scale"] == "0.9"
    form = client.post("/api/generate-image", data={
        "prompt": "a host", "seed": "3", "use_model_manager": "true", "task": "host_face",
        "loras": json.dumps([{"name": "host_person", "scale": 0.9}]), **{k: str(v) for k, v in SMALL.items()}})
    assert form.status_code == 200, form.text
    assert pixels(form.content) == pixels(as_json.content)
    assert pixels(as_json.content) != pixels(_generate(client, use_model_manager=True, task="host_face").content)


def test_loras_can_add_a_registered_lora_to_a_task_without_one(client):
    r = _generate(client, use_model_manager=True, task="science_background", loras=[{"name": "host_person", "scale": 0.5}])
    assert r.status_code == 200
    assert (r.headers["x-adapter"], r.headers["x-lora-scale"]) == ("host_person", "0.5")


@pytest.mark.parametrize(("fields", "complaint"), [
    (dict(loras=[{"name": "film_lok", "scale": 0.4}]), "not a registered LoRA; registered: host_person"),
    (dict(loras=[{"name": "/etc/passwd", "scale": 0.4}]), "looks like a path"),
    (dict(loras=[{"name": "host_person", "scale": 3}]), "less than or equal to 2"),
    (dict(loras="[not json"), "Input should be a valid list"),  # JSON: a list, not text holding one
], ids=["unknown", "path", "range", "not_a_list"])
def test_bad_loras_are_422_naming_the_field(client, fields, complaint):
    r = _generate(client, use_model_manager=True, task="host_face", **fields)
    assert r.status_code == 422
    err = r.json()["error"]
    assert complaint in err["message"] and (err["param"] or "").startswith("loras")


def test_loras_in_a_form_is_json_text_and_bad_json_is_422_naming_the_field(client):
    r = client.post("/api/generate-image", data={"prompt": "a host", "use_model_manager": "true", "task": "host_face",
                                                 "loras": "[not json", **SMALL})
    assert r.status_code == 422
    err = r.json()["error"]
    assert "does not parse" in err["message"] and err["param"] == "loras"


def test_loras_without_use_model_manager_is_refused(client):
    r = _generate(client, loras=[{"name": "host_person", "scale": 0.4}])
    assert r.status_code == 422 and r.json()["error"]["param"] == "loras"


def test_metrics_count_compilations(client):
    text = client.get("/metrics").text
    assert "flux_compilations_total 0.0" in text
