"""DNS rebinding (issue 17 item 10), against a real uvicorn server with raw ``Host`` headers.

Before: ``Host: evil.example:PORT`` with ``Origin: http://evil.example:PORT`` got 202: the Origin check
compared Origin with Host, and a page on a name the attacker re-points at 127.0.0.1 is "same origin" by that
rule. Now the ``Host`` is checked first against the names the service answers to: loopback names, IP
literals (a name is what rebinding needs), the bound name and ``FLUX_ALLOWED_HOSTS`` (here
``studio.example,*.lan.example``, see tests/hardening_support.py); anything else gets 400 before any work.
"""

from __future__ import annotations

import socket

import pytest

from tests.hardening_support import generations, hardened_server
from tests.http_support import SMALL_JSON


@pytest.fixture(scope="module")
def server():
    return hardened_server()


def test_rebound_name_with_its_own_origin_is_refused_with_400_before_any_work(client, server):
    evil = f"evil.example:{server.port}"
    before = generations(client)
    r = client.post("/api/jobs", json={"prompt": "rebinding", **SMALL_JSON},
                    headers={"Host": evil, "Origin": f"http://{evil}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_host" and err["param"] == "Host"
    assert evil in err["message"] and "FLUX_ALLOWED_HOSTS" in err["message"]
    assert generations(client) == before
    for path in ("/", "/api/tasks", "/openapi.json", "/static/app.js"):  # a rebound page must read nothing either
        assert client.get(path, headers={"Host": evil}).status_code == 400, path


@pytest.mark.parametrize("host", ["localhost", "localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}",
                                  "LOCALHOST.:{port}", "10.1.2.3:{port}", "[fe80::1]", "studio.example:{port}",
                                  "a.lan.example", "b.a.lan.example:8443"])
def test_loopback_names_ip_literals_and_allowed_hosts_are_served(client, server, host):
    host = host.format(port=server.port)
    r = client.get("/api/tasks", headers={"Host": host})
    assert r.status_code == 200, (host, r.text)


@pytest.mark.parametrize("host", ["evil.example", "lan.example", "studio.example.evil.example", "127.0.0.1.nip.io",
                                  "localhost.evil.example:{port}", "x:notaport", ""])
def test_other_names_are_refused(client, server, host):
    r = client.get("/health", headers={"Host": host.format(port=server.port)})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_host", (host, r.text)


def test_the_page_from_localhost_still_generates(client, server):
    """The page opened as http://localhost:PORT: same origin, allowed host."""
    here = f"localhost:{server.port}"
    r = client.post("/api/jobs", json={"prompt": "ok", **SMALL_JSON}, headers={"Host": here, "Origin": f"http://{here}"})
    assert r.status_code == 202, r.text
    client.delete(f"/api/jobs/{r.json()['id']}")


def test_a_request_without_host_is_served(server):
    """HTTP/1.0 without Host: not a browser (browsers always send it), so nothing to rebind."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]


def _asgi_status(settings: dict, host: str | None, server=("127.0.0.1", 8000)) -> int:
    """The status ``HostGuard(**settings)`` answers for this Host on a connection the server calls ``server``."""
    import asyncio

    from app.http.host_guard import HostGuard

    sent = []

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message):
        sent.append(message)

    async def receive():
        return {"type": "http.request", "body": b""}

    headers = [(b"host", host.encode())] if host is not None else []
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers, "server": server}
    asyncio.run(HostGuard(app, **{"allowed_hosts": [], **settings})(scope, receive, send))
    return sent[0]["status"]


def test_bound_name_server_name_and_the_wildcard_setting():
    bound = {"bound_host": "box.lan"}  # `flux-service serve --host box.lan`
    assert _asgi_status(bound, "box.lan:8000") == 204 and _asgi_status(bound, "evil.example") == 400
    assert _asgi_status({"bound_host": "0.0.0.0"}, "0.0.0.0:8000") == 204  # an address, like any other
    assert _asgi_status({}, "testserver", server=("testserver", 80)) == 204  # what the server calls itself
    assert _asgi_status({}, "testserver") == 400
    assert _asgi_status({}, None) == 204  # no Host at all: not a browser
    assert _asgi_status({"allowed_hosts": ["*"]}, "evil.example") == 204


def test_allowed_hosts_setting_takes_names_only():
    from pipelines.errors import ConfigError
    from pipelines.settings import load_settings

    assert load_settings(allowed_hosts="Studio.example, *.lan.example").allowed_hosts == ["studio.example",
                                                                                           "*.lan.example"]
    for bad in ("http://studio.example", "studio.example:8080", "a/b", "**.x"):
        with pytest.raises(ConfigError, match="FLUX_ALLOWED_HOSTS.*not a host name"):
            load_settings(allowed_hosts=bad)


def test_serving_beyond_loopback_says_which_hosts_are_answered():
    from app.http.host_guard import bound_beyond_loopback_note

    assert bound_beyond_loopback_note("127.0.0.1", []) is None and bound_beyond_loopback_note("localhost", []) is None
    note = bound_beyond_loopback_note("0.0.0.0", [])
    assert "localhost or an IP address" in note and "FLUX_ALLOWED_HOSTS (none)" in note
    assert "box.lan" in bound_beyond_loopback_note("box.lan", ["a.example"])
