"""The OpenAPI document is the contract (issue 9, items 2-3): read it the way clients do, and hold it to the server.

Two kinds of checks. The document itself (built by ``create_app`` without loading a model, so these are
instant): limits equal to the settings in force, no ``null`` for Swagger UI to pre-fill, the error envelope
on every error status, security only with an API key, PNG answers binary with every result header described.
Then against the real server: a client generated from ``/openapi.json`` by openapi-python-client at test time
(with the project's generator config, no hand edits) makes an image and runs a job, and real answers match
the documented shapes and headers.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.http.job_schema import Job
from app.http.routes.generate import HEADER_DOCS, RESULT_HEADERS
from app.main import create_app
from tests.conftest import make_settings

ROOT = Path(__file__).resolve().parent.parent
GENERATOR_CONFIG = ROOT / "docs" / "openapi-python-client.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ERROR_REF = "#/components/schemas/ErrorEnvelope"


def spec_of(**settings) -> dict:
    return create_app(make_settings(**settings)).openapi()


def operations(spec: dict):
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            yield method.upper(), path, op


# ------------------------------------------------------------------ the document
def test_request_limits_in_the_schema_are_the_settings_in_force():
    body = spec_of(max_prompt_chars=300, min_size=64, max_size=512, max_steps=8)["components"]["schemas"]
    for name in ("GenerateParams",):
        props = body[name]["properties"]
        assert props["prompt"]["maxLength"] == 300 and props["prompt"]["minLength"] == 1
        for side in ("width", "height"):
            assert (props[side]["minimum"], props[side]["maximum"], props[side]["multipleOf"]) == (64, 512, 16)
        assert (props["num_inference_steps"]["minimum"], props["num_inference_steps"]["maximum"]) == (1, 8)
        assert (props["guidance_scale"]["minimum"], props["guidance_scale"]["maximum"]) == (0, 20)
        assert (props["lora_alpha"]["minimum"], props["lora_alpha"]["maximum"]) == (0, 2)
        assert body[name]["required"] == ["prompt"]


def test_default_prompt_limit_in_the_schema_is_the_enforced_2000():
    props = spec_of()["components"]["schemas"]["GenerateParams"]["properties"]
    assert props["prompt"]["maxLength"] == 2000


def test_optional_fields_are_never_null_in_the_request_schemas():
    schemas = spec_of()["components"]["schemas"]
    for name in ("GenerateParams",):
        text = json.dumps(schemas[name])
        assert "null" not in text, text
        assert all("anyOf" not in p for p in schemas[name]["properties"].values())


def test_the_body_is_json_only_with_a_working_example_and_the_forms_are_described():
    """One content type: openapi-python-client 0.29 emits unimportable code for two (see app/http/openapi.py)."""
    spec = spec_of()
    body = spec["paths"]["/api/generate-image"]["post"]["requestBody"]
    assert list(body["content"]) == ["application/json"] and body["required"] is True
    assert body["content"]["application/json"]["example"] == {"prompt": "科普主持人，专业形象，微笑"}
    assert spec["paths"]["/api/jobs"]["post"]["requestBody"] == body
    assert "multipart form" in spec["info"]["description"] and "urlencoded" in spec["info"]["description"]


def test_every_error_status_of_every_route_is_the_envelope_and_fastapis_422_shape_is_gone():
    """400 (a Host not ours) and 403 (foreign Origin) can come from any route, 408 (slow body) from any route
    with a body."""
    spec = spec_of(api_key="k")
    assert "HTTPValidationError" not in json.dumps(spec)
    for method, path, op in operations(spec):
        for status, response in op["responses"].items():
            if int(status) >= 400 and (path, status) != ("/ready", "503"):
                assert response["content"]["application/json"]["schema"]["$ref"] == ERROR_REF, (method, path, status)
    expected = {("POST", "/api/generate-image"): {"400", "401", "403", "408", "413", "422", "500", "503", "504"},
                ("POST", "/api/jobs"): {"400", "401", "403", "408", "413", "422", "500", "503"},
                # 503: storage_unavailable (a finished job the job database cannot read now); 500: image_corrupt
                ("GET", "/api/jobs/{job_id}"): {"400", "401", "403", "404", "503"},
                ("GET", "/api/jobs/{job_id}/image"): {"400", "401", "403", "404", "409", "500", "503"},
                ("DELETE", "/api/jobs/{job_id}"): {"400", "401", "403", "404", "503"},
                ("GET", "/health"): {"400", "403"}}
    for method, path, op in operations(spec):
        if (method, path) in expected:
            assert {s for s in op["responses"] if int(s) >= 400} == expected[(method, path)], (method, path)


def test_without_an_api_key_the_document_asks_for_no_auth_and_lists_no_401():
    spec = spec_of()
    assert "securitySchemes" not in spec.get("components", {})
    for method, path, op in operations(spec):
        assert "security" not in op and "401" not in op["responses"], (method, path)


def test_with_an_api_key_every_api_route_requires_bearer_auth_and_lists_401():
    spec = spec_of(api_key="k")
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for method, path, op in operations(spec):
        if path.startswith("/api/"):
            assert op["security"] == [{"HTTPBearer": []}] and "401" in op["responses"], (method, path)
        else:
            assert "security" not in op and "401" not in op["responses"], (method, path)


@pytest.mark.parametrize("method,path", [("post", "/api/generate-image"), ("get", "/api/jobs/{job_id}/image")])
def test_png_answers_are_binary_with_every_result_header_described(method, path):
    ok = spec_of()["paths"][path][method]["responses"]["200"]
    assert ok["content"]["image/png"]["schema"] == {"type": "string", "format": "binary"}
    x_headers = [h for h in RESULT_HEADERS if h.startswith("X-")]
    assert sorted(ok["headers"]) == sorted(x_headers)
    for name in x_headers:
        assert name in HEADER_DOCS, f"describe {name} in HEADER_DOCS (app/http/routes/generate.py)"
        assert ok["headers"][name]["description"] == HEADER_DOCS[name]


def test_jobs_answer_the_job_model_with_its_status_enum():
    spec = spec_of()
    created = spec["paths"]["/api/jobs"]["post"]["responses"]["202"]
    assert created["content"]["application/json"]["schema"]["$ref"].endswith("/Job")
    assert "Location" in created["headers"]
    status = spec["components"]["schemas"]["Job"]["properties"]["status"]
    assert status["enum"] == ["queued", "running", "succeeded", "failed", "cancelled"]


def test_a_list_field_added_to_the_model_is_json_text_in_a_form_under_the_same_json_rules():
    """The extension point other features use (e.g. ``loras``): one line in the model, forms follow by themselves."""
    from pydantic import BaseModel, Field, ValidationError, create_model

    from app.http.request_body import form_values
    from app.http.schemas import GenerateParams
    from pipelines.errors import InvalidRequest

    class Lora(BaseModel):
        name: str
        scale: float = 1.0

    model = create_model("WithLoras", __base__=GenerateParams, loras=(list[Lora], Field(None, description="LoRAs")))
    assert model.model_json_schema()["properties"]["loras"]["type"] == "array"
    data = form_values(model, [("prompt", "p"), ("loras", '[{"name": "a", "scale": 0.5}]')])
    assert model.model_validate(data).loras == [Lora(name="a", scale=0.5)]
    with pytest.raises(InvalidRequest, match="more than once"):
        form_values(model, [("prompt", "p"), ("loras", '[{"name": "a", "name": "b"}]')])
    with pytest.raises(ValidationError):  # null in JSON text is null: refused like a JSON body's null
        model.model_validate(form_values(model, [("prompt", "p"), ("loras", "null")]))


def test_a_405_lists_every_method_of_its_path_in_allow():
    """Issue 17 item 20: ``OPTIONS /api/jobs/{id}`` answered ``Allow: GET`` (DELETE missing), because each
    method is its own route and the first one's methods were sent. Every documented path, asked with a
    method it does not have, answers 405 with exactly its documented methods."""
    from fastapi.testclient import TestClient

    app = create_app(make_settings())
    spec = app.openapi()
    with_two = 0
    client = TestClient(app)  # no lifespan: routing answers 405 before any handler or model
    for path, ops in spec["paths"].items():
        url = path.replace("{job_id}", "j").replace("{run_id}", "r").replace("{path}", "p.png")
        documented = {m.upper() for m in ops}
        for method in ("OPTIONS", "PUT", "PATCH"):
            r = client.request(method, url)
            assert r.status_code == 405, (method, path, r.status_code)
            assert r.json()["error"]["type"] == "method_not_allowed"
            allow = {m.strip() for m in r.headers["allow"].split(",")}
            assert allow == documented, (method, path, r.headers["allow"])
        with_two += len(ops) > 1
    assert with_two >= 3  # /api/jobs/{job_id}, /api/trainings, /api/trainings/{run_id}
    r = client.post("/static/app.js")  # the page's files: GET and HEAD
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


# ------------------------------------------------------------------ against the real server
def test_every_result_header_a_real_answer_carries_is_documented(client):
    r = client.post("/api/generate-image", json={"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 1})
    assert r.status_code == 200, r.text
    documented = client.get("/openapi.json").json()["paths"]["/api/generate-image"]["post"]["responses"]["200"]
    sent = {h.lower() for h in r.headers if h.lower().startswith("x-")}
    assert sent and sent <= {h.lower() for h in documented["headers"]}
    assert sent == {h.lower() for h in documented["headers"] if documented["headers"][h]["required"]}


def test_real_job_answers_validate_against_the_job_model(client):
    r = client.post("/api/jobs", json={"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 1})
    assert r.status_code == 202, r.text
    Job.model_validate(r.json())
    job_id = r.json()["id"]
    for _ in range(600):
        job = client.get(f"/api/jobs/{job_id}").json()
        Job.model_validate(job)
        if job["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.05)
    assert job["status"] == "succeeded" and job["info"]["width"] == 64


@pytest.fixture(scope="module")
def generated_client(server, tmp_path_factory):
    """openapi-python-client run on the live /openapi.json, imported as a package (as a user would)."""
    import httpx

    out = tmp_path_factory.mktemp("generated")
    spec = out / "openapi.json"
    spec.write_text(httpx.get(f"{server.url}/openapi.json").text)
    config = out / "config.yaml"  # the project's config, minus the formatting hooks (ruff: cosmetic, slow)
    config.write_text(GENERATOR_CONFIG.read_text() + "\npost_hooks: []\n")
    cli = Path(sys.executable).parent / "openapi-python-client"
    done = subprocess.run([str(cli), "generate", "--path", str(spec), "--meta", "none", "--config", str(config),
                           "--output-path", str(out / "flux_client")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr  # nothing left out
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("flux_client")
    finally:
        sys.path.remove(str(out))


def test_generated_client_makes_an_image_with_a_json_body(generated_client, server):
    from flux_client.api.generate import generate_image
    from flux_client.models import GenerateParams

    c = generated_client.Client(base_url=server.url, timeout=120)
    r = generate_image.sync_detailed(client=c, body=GenerateParams(prompt="科普主持人", width=64, height=64,
                                                                   num_inference_steps=2, seed=7))
    assert r.status_code == 200
    png = r.parsed.payload.read()
    assert png.startswith(PNG_MAGIC) and r.headers["x-seed"] == "7"


def test_generated_client_gets_the_error_envelope_parsed(generated_client, server):
    from flux_client.api.generate import generate_image
    from flux_client.models import ErrorEnvelope, GenerateParams

    c = generated_client.Client(base_url=server.url, timeout=120)
    err = generate_image.sync(client=c, body=GenerateParams(prompt="p", width=65))
    assert isinstance(err, ErrorEnvelope) and err.error.param == "width"


def test_generated_client_runs_a_job_with_a_task_and_polls_it(generated_client, server):
    from flux_client.api.jobs import create_job, get_job, get_job_image
    from flux_client.models import GenerateParams, JobStatus
    from flux_client.models import Job as JobModel

    c = generated_client.Client(base_url=server.url, timeout=120)
    job = create_job.sync(client=c, body=GenerateParams(prompt="p", use_model_manager=True, task="host_face",
                                                        width=64, height=64, lora_alpha=0.5))
    assert isinstance(job, JobModel), job
    for _ in range(600):
        job = get_job.sync(client=c, job_id=job.id)
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            break
        time.sleep(0.05)
    assert job.status == JobStatus.SUCCEEDED and job.adapter is not None and job.lora_scale == 0.5
    image = get_job_image.sync(client=c, job_id=job.id)
    assert image.payload.read().startswith(PNG_MAGIC)
