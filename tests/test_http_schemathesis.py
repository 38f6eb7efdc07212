"""Property-based run over the OpenAPI schema: no 5xx, and every answer is what the document says.

Bounded on purpose: the app runs with max_size=32 and max_steps=2, so every input the service accepts is a
tiny image (~0.1 s on the CPU demo model), and each operation gets a few schema-valid and schema-invalid
examples. Checked on every answer: no server error; the status, content type, body schema and headers are
the documented ones (response conformance, issue 9); and schema-invalid input is refused with a 4xx
(``negative_data_rejection``), so the schema is never looser than the server. Not checked: that every
schema-valid request is accepted: a 422 for an unknown task or a task without ``use_model_manager`` is
correct behaviour that a schema cannot express.
(Schemathesis' lazy pytest loader does not run on this pytest, so operations are driven with hypothesis
directly; the list below must cover every operation in the schema.) Also: real event streams validated event by
event against the document, and the ``schemathesis run --checks all`` command line against a live server with an
API key, as issue 17 ran it (every operation, /api/trainings included, in the deterministic phases).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from tests.conftest import make_settings
from tests.http_support import LiveServer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          response_headers_conformance, negative_data_rejection]

OPERATIONS = [
    ("POST", "/api/generate-image"),
    ("POST", "/api/jobs"),
    ("GET", "/api/jobs/{job_id}"),
    ("GET", "/api/jobs/{job_id}/image"),
    ("DELETE", "/api/jobs/{job_id}"),
    ("GET", "/api/jobs/{job_id}/events"),
    ("GET", "/api/tasks"),
    ("GET", "/api/loras"),
    ("GET", "/health"),
    ("GET", "/ready"),
    ("GET", "/metrics"),
]


#: a training that ran (as the trainer leaves it on disk), so its event stream can be read without training
FINISHED_RUN = {"id": "tr_20260101000000abc123", "status": "succeeded", "created": 1.0, "name": "done",
                "trigger": "ohwx", "task": None, "strength": 1.0, "overwrite_task": False, "source": "photos",
                "config": {"steps": 2, "rank": 4, "alpha": 4.0, "lr": 1e-4, "resolutions": [64], "seed": 0,
                           "preset": "demo"}, "dataset": {}, "attempts": 1, "cancel_requested": False, "error": None,
                "exit_code": 0}
FINISHED_EVENTS = [{"type": "dataset", "images": 4}, {"type": "phase", "phase": "caching", "images": 4},
                   {"type": "sample", "step": 0, "file": "samples/step-000000.png"},
                   {"type": "phase", "phase": "training", "step": 0, "total": 2},
                   {"type": "step", "step": 1, "total": 2, "loss": 0.5, "eta_s": 0.1, "step_s": 0.1},
                   {"type": "step", "step": 2, "total": 2, "loss": 0.4, "eta_s": 0.0, "step_s": 0.1},
                   {"type": "checkpoint", "step": 2, "dir": "checkpoints/step-000002"},
                   {"type": "sample", "step": 2, "file": "samples/step-000002.png"}]


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory):
    from pipelines.engine import FluxEngine

    trainings = tmp_path_factory.mktemp("trainings")
    run = trainings / FINISHED_RUN["id"]
    run.mkdir()
    (run / "run.json").write_text(json.dumps(FINISHED_RUN))
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in FINISHED_EVENTS))
    # its own engine: the limits that `plan` enforces are the engine's settings, not the app's
    limited = make_settings(max_size=32, max_steps=2, queue_size=64, request_timeout_s=30, trainings_dir=trainings)
    app = create_app(limited, engine=FluxEngine.from_settings(limited))
    with TestClient(app):  # runs the lifespan: the worker is up for every call schemathesis makes
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_fuzzed_operations_are_all_the_operations(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    # /api/trainings is not fuzzed: a schema-valid upload would start a real training process; its
    # routes are tested against a live server in tests/test_training_http.py
    assert {o for o in found if not o[1].startswith("/api/trainings")} == set(OPERATIONS)
    assert {o for o in found if o[1].startswith("/api/trainings")} == {
        ("POST", "/api/trainings"), ("GET", "/api/trainings"), ("GET", "/api/trainings/{run_id}"),
        ("DELETE", "/api/trainings/{run_id}"), ("GET", "/api/trainings/{run_id}/events"),
        ("GET", "/api/trainings/{run_id}/files/{path}")}


#: schema-invalid input exists only for operations that take a body (a job id is any string, and with no API key
#: configured there is no header to get wrong); "feasible" steers schema-valid bodies to ones the model takes
CASES = ([(m, p, "positive") for m, p in OPERATIONS] + [(m, p, "feasible") for m, p in OPERATIONS if m == "POST"]
         + [(m, p, "negative") for m, p in OPERATIONS if m == "POST"])


def make_feasible(case) -> None:
    """Random schema-valid bodies nearly all fail model rules a schema cannot say (the default 1024 size is over
    this app's 32 limit, a random task name is unknown); fix those so 200/202 answers and headers get checked."""
    body = case.body
    if isinstance(body, dict):
        body.setdefault("width", 16)
        body.setdefault("height", 16)
        body.setdefault("num_inference_steps", 1)
        if body.get("use_model_manager"):
            body["task"] = "host_face"
        else:
            body.pop("task", None)
            body.pop("lora_alpha", None)


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {g}" for m, p, g in CASES])
def test_every_answer_conforms_to_the_schema_and_none_is_5xx(api_schema, method, path, mode):
    operation = api_schema[path][method]
    generation = GenerationMode.NEGATIVE if mode == "negative" else GenerationMode.POSITIVE
    statuses = []

    @given(case=operation.as_strategy(generation_mode=generation))
    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        if mode == "feasible":
            make_feasible(case)
        statuses.append(case.call_and_validate(checks=CHECKS).status_code)

    check()
    if mode == "feasible":  # the point of this mode: successful answers were checked, not only refusals
        assert sum(s < 300 for s in statuses) >= len(statuses) // 2, statuses


def test_real_event_streams_conform_to_the_documented_events(api_schema):
    """Issue 17 item 21: each event of a stream is ``{event, data}``, and ``data`` is JSON whose schema depends on
    the event; schemathesis validates every event of a real job's stream (queued ... succeeded, with previews)
    and of a finished training's against the document (``contentSchema`` included)."""
    from schemathesis.specs.openapi.checks import response_schema_conformance as conforms

    created = api_schema["/api/jobs"]["POST"].Case(
        body={"prompt": "events", "width": 16, "height": 16, "num_inference_steps": 2}).call()
    assert created.status_code == 202, created.text
    stream = api_schema["/api/jobs/{job_id}/events"]["GET"].Case(
        path_parameters={"job_id": created.json()["id"]}, query={"preview": True})
    response = stream.call_and_validate(checks=[conforms, content_type_conformance, not_a_server_error])
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[-1] == "succeeded" and "progress" in names, names

    training = api_schema["/api/trainings/{run_id}/events"]["GET"].Case(path_parameters={"run_id": FINISHED_RUN["id"]})
    response = training.call_and_validate(checks=[conforms, content_type_conformance, not_a_server_error])
    names = [line[7:] for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "state" and names[-1] == "succeeded" and "step" in names and "sample" in names, names


def test_schemathesis_checks_all_against_a_live_server_with_an_api_key(tmp_path):
    """What issue 17 ran: ``schemathesis run --checks all`` against ``uvicorn`` with ``FLUX_API_KEY`` set, in its
    deterministic phases (the schema's examples, then its coverage cases: every boundary, missing and wrong
    parameters, a missing ``Authorization``, methods a path does not have). It found the one-method ``Allow``
    (item 20) and the undocumented 404 of a training's events (item 22). Two checks are left out on purpose:
    ``positive_data_acceptance`` (a schema cannot say that a task name must be one the server knows, or that
    ``lora_alpha`` needs a task with a LoRA: those 422s are right) and ``use_after_free`` (``DELETE`` on a job
    cancels it; the job stays readable, as docs/http-api.md says)."""
    server = LiveServer(FLUX_API_KEY="k", FLUX_MAX_SIZE="32", FLUX_MAX_STEPS="2",
                        FLUX_TRAININGS_DIR=str(tmp_path / "trainings"), FLUX_MODELS_DIR=str(tmp_path / "models"))
    try:
        run = subprocess.run(
            [str(Path(sys.executable).parent / "schemathesis"), "run", f"{server.url}/openapi.json",
             "-H", "Authorization: Bearer k", "--checks", "all",
             "--exclude-checks", "positive_data_acceptance,use_after_free", "--phases", "examples,coverage",
             "--workers", "1", "--seed", "1", "--request-timeout", "60", "--no-color"],
            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    finally:
        server.stop()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    tested = re.search(r"Tested: (\d+)", run.stdout)
    assert tested and int(tested.group(1)) >= 17, run.stdout[-3000:]  # every operation, trainings included
    assert "Traceback" not in server.log.read_text()
