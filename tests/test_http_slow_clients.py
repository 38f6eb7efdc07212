"""Slow clients and too many connections (issue 8 item 5), with raw sockets against a real uvicorn server.

Before: 300 slow-header and 300 slow-body connections were all still open after 65 s. Now a client has
``FLUX_HEADER_TIMEOUT_S`` to send its headers (then the connection is closed), ``FLUX_BODY_TIMEOUT_S`` for
its body (then 408 with the envelope), and a request beyond ``FLUX_MAX_CONNECTIONS`` gets 503. The servers
here use 1-1.5 s timeouts and a few dozen connections, so the module takes seconds.
"""

from __future__ import annotations

import json
import select
import socket
import time

import pytest

from tests.hardening_support import BODY_TIMEOUT_S as BODY_TIMEOUT
from tests.hardening_support import HEADER_TIMEOUT_S as HEADER_TIMEOUT
from tests.hardening_support import hardened_server
from tests.http_support import SMALL, LiveServer, StepDelay

N = 24


@pytest.fixture(scope="module")
def server():
    return hardened_server()


def _connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _trickle(socks: list[socket.socket], chunk: bytes, limit_s: float) -> tuple[dict, dict]:
    """Send ``chunk`` on every open socket every 0.2 s until the server closes them (or ``limit_s``).
    Returns {index: seconds until closed}, {index: bytes the server sent}."""
    started = time.monotonic()
    closed: dict[int, float] = {}
    received: dict[int, bytes] = {i: b"" for i in range(len(socks))}
    next_send = started
    while len(closed) < len(socks) and time.monotonic() - started < limit_s:
        now = time.monotonic()
        if now >= next_send:
            for i, s in enumerate(socks):
                if i not in closed:
                    try:
                        s.send(chunk)
                    except OSError:
                        closed[i] = now - started
            next_send = now + 0.2
        readable, _, _ = select.select([s for i, s in enumerate(socks) if i not in closed], [], [], 0.05)
        for s in readable:
            i = socks.index(s)
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data:
                received[i] += data
            else:
                closed[i] = time.monotonic() - started
    for s in socks:
        s.close()
    return closed, received


def test_slow_header_connections_are_closed_after_the_header_timeout(server):
    socks = [_connect(server) for _ in range(N)]
    for s in socks:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    closed, received = _trickle(socks, b"X-Slow: a\r\n", limit_s=HEADER_TIMEOUT + 8)
    assert len(closed) == N, f"{N - len(closed)} slow-header connections still open"
    assert all(HEADER_TIMEOUT * 0.8 <= t <= HEADER_TIMEOUT + 4 for t in closed.values()), closed
    assert not any(received.values())  # no request was complete: nothing to answer, just a close


def test_a_connection_that_sends_nothing_is_closed(server):
    socks = [_connect(server) for _ in range(4)]
    closed, _ = _trickle(socks, b"", limit_s=HEADER_TIMEOUT + 8)
    assert len(closed) == 4


def test_slow_body_connections_get_408_with_the_envelope(server):
    body_len = 300
    socks = [_connect(server) for _ in range(N)]
    for s in socks:
        s.sendall(b"POST /api/generate-image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n{" % body_len)
    closed, received = _trickle(socks, b" ", limit_s=BODY_TIMEOUT + 8)
    assert len(closed) == N, f"{N - len(closed)} slow-body connections still open"
    assert all(BODY_TIMEOUT * 0.8 <= t <= BODY_TIMEOUT + 4 for t in closed.values()), closed
    for data in received.values():
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), data[:200]
        assert b"connection: close" in head.lower()
        err = json.loads(body)["error"]
        assert err["type"] == "request_timeout" and f"{BODY_TIMEOUT:g} seconds" in err["message"]


def test_slow_next_request_on_a_keep_alive_connection_is_closed(server):
    s = _connect(server)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    first = b""
    while b'"ok"' not in first:
        first += s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    closed, received = _trickle([s], b"X-Slow: a\r\n", limit_s=HEADER_TIMEOUT + 8)
    assert closed and not received[0]


def test_requests_that_wait_longer_than_the_timeouts_for_the_gpu_still_succeed(server):
    """The clocks stop once the body is in: a generation slower than both timeouts is answered normally."""
    with server.client() as c, StepDelay(c, 1.0):
        started = time.monotonic()
        r = c.post("/api/generate-image", data={"prompt": "slow gpu", **SMALL})
        assert r.status_code == 200 and time.monotonic() - started > BODY_TIMEOUT + HEADER_TIMEOUT


def test_service_answers_normally_after_slow_clients_and_logs_no_traceback(server):
    with server.client() as c:
        assert c.post("/api/generate-image", json={"prompt": "after", **SMALL}).status_code == 200
    assert "Traceback" not in server.log.read_text()


def test_request_beyond_max_connections_gets_503_with_the_envelope():
    server = LiveServer(FLUX_MAX_CONNECTIONS="3", FLUX_HEADER_TIMEOUT_S="60")
    try:
        held = [_connect(server) for _ in range(3)]
        time.sleep(0.3)  # let the server accept them
        with server.client() as c:
            r = c.get("/health")
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["type"] == "overloaded" and "limit 3" in r.json()["error"]["message"]
        for s in held:
            s.close()
        deadline = time.monotonic() + 10
        while True:
            with server.client() as c:
                status = c.get("/health").status_code
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
    finally:
        server.stop()
