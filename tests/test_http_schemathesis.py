"""Property-based run over the OpenAPI schema: whatever the input, the service never answers 5xx.

Bounded on purpose: the app runs with max_size=32 and max_steps=2, so every input the service accepts is a
tiny image (~0.1 s on the CPU demo model), and each operation gets a few schema-valid and schema-invalid
examples. Only ``not_a_server_error`` is checked: a 422 for a schema-valid but model-invalid request (an
unknown task, a size that is not a multiple of 16) is correct behaviour here, not a finding.
(Schemathesis' lazy pytest loader does not run on this pytest, so operations are driven with hypothesis
directly; the list below must cover every operation in the schema.)
"""

from __future__ import annotations

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from app.main import create_app
from tests.conftest import make_settings

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


@pytest.fixture(scope="module")
def api_schema():
    from pipelines.engine import FluxEngine

    # its own engine: the limits that `plan` enforces are the engine's settings, not the app's
    limited = make_settings(max_size=32, max_steps=2, queue_size=64, request_timeout_s=30)
    app = create_app(limited, engine=FluxEngine.from_settings(limited))
    with TestClient(app):  # runs the lifespan: the worker is up for every call schemathesis makes
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


def test_the_fuzzed_operations_are_all_the_operations(api_schema):
    found = {(op.ok().method.upper(), op.ok().path) for op in api_schema.get_all_operations()}
    assert found == set(OPERATIONS)


#: schema-invalid input exists only for operations that take input
CASES = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + [
    (m, p, GenerationMode.NEGATIVE) for m, p in OPERATIONS if m != "GET" or "{" in p]


@pytest.mark.parametrize("method,path,mode", CASES, ids=[f"{m} {p} {g.value}" for m, p, g in CASES])
def test_no_input_makes_the_service_fail_with_5xx(api_schema, method, path, mode):
    operation = api_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=8, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def check(case):
        case.call_and_validate(checks=[not_a_server_error])

    check()
