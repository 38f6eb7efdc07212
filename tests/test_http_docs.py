"""docs/http-api.md lists every status (issue 17): its per-route table says what ``/openapi.json`` says.

The OpenAPI document is built from the routes (and ``app/http/openapi.py``), so it is what the service
answers (schemathesis holds the server to it, tests/test_http_schemathesis.py); this keeps the prose in step
with it: every operation has a row listing exactly its statuses, and every error status has a row in the
Errors table saying when it happens. Instant: no model is loaded.
"""

from __future__ import annotations

import re

from app.main import create_app
from tests.conftest import make_settings
from tests.http_support import ROOT

DOC = ROOT / "docs" / "http-api.md"
STATUS = re.compile(r"\b([1-5]\d\d)\b")


def _table_after(header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header row starts with ``header_start``."""
    lines = DOC.read_text(encoding="utf-8").splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[at + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def _route(method: str, path: str) -> str:
    return f"{method} {re.sub(r'{[^}]+}', '{}', path)}"  # the doc says {id} where the schema says {job_id}


def test_the_status_table_lists_exactly_the_statuses_of_every_operation():
    spec = create_app(make_settings(api_key="k")).openapi()  # with a key: 401 is listed too
    documented = {}
    for cells in _table_after("| route | answers |"):
        route = re.fullmatch(r"`(\w+) (\S+)`", cells[0])
        assert route, f"not a route: {cells[0]!r}"
        documented[_route(*route.groups())] = {int(s) for cell in cells[1:] for s in STATUS.findall(cell)}
    expected = {_route(method.upper(), path): {int(s) for s in op["responses"]}
                for path, ops in spec["paths"].items() for method, op in ops.items()}
    assert set(documented) == set(expected), "routes missing from / extra in docs/http-api.md's status table: " \
        f"{set(expected) ^ set(documented)}"
    wrong = {route: f"doc {sorted(documented[route])}, /openapi.json {sorted(statuses)}"
             for route, statuses in expected.items() if documented[route] != statuses}
    assert not wrong, f"docs/http-api.md's status table differs from /openapi.json: {wrong}"


def test_every_error_status_is_explained_in_the_errors_table():
    spec = create_app(make_settings(api_key="k")).openapi()
    used = {int(s) for ops in spec["paths"].values() for op in ops.values() for s in op["responses"] if int(s) >= 400}
    explained = {int(cells[0]) for cells in _table_after("| status | when |")}
    assert used <= explained, f"statuses without a row in docs/http-api.md's Errors table: {sorted(used - explained)}"
