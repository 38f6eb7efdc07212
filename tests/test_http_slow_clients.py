"""Slow clients and too many connections (issue 8 item 5), with raw sockets against a real uvicorn server.

Before: 300 slow-header and 300 slow-body connections were all still open after 65 s. Now a client has
``FLUX_HEADER_TIMEOUT_S`` to send its headers (then the connection is closed), its body must keep arriving
(no gap over ``FLUX_BODY_TIMEOUT_S``, at least ``FLUX_BODY_MIN_BYTES_PER_S`` on average after the first
``FLUX_BODY_TIMEOUT_S``; then 408 with the envelope), and a request beyond ``FLUX_MAX_CONNECTIONS`` gets 503.
The servers here use 1-1.5 s timeouts and a few dozen connections, so the module takes seconds.
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
from tests.http_support import SMALL, SMALL_JSON, LiveServer, StepDelay

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
        s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
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
        s.sendall(b"POST /api/generate-image HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
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


def _send_body_in_chunks(server, path: str, body: bytes, chunk: int, every_s: float, stop_after: int | None = None):
    """POST ``body`` to ``path`` in ``chunk``-byte pieces every ``every_s`` (only the first ``stop_after`` bytes
    when given), then read the answer. Returns (seconds from the headers to the server's answer, answer bytes)."""
    s = _connect(server)
    s.settimeout(30)
    s.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
              % (path.encode(), len(body)))
    started = time.monotonic()
    upto = len(body) if stop_after is None else stop_after
    try:
        for i in range(0, upto, chunk):
            try:
                s.sendall(body[i:min(i + chunk, upto)])
            except OSError:  # the server answered and closed early: read what it said
                break
            time.sleep(every_s)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
            data = s.recv(65536)
            if not data:
                break
            answer += data
        return time.monotonic() - started, answer
    finally:
        s.close()


def _length(answer: bytes) -> int:
    for line in answer.partition(b"\r\n\r\n")[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def test_a_steady_upload_longer_than_the_body_timeout_is_received(server):
    """Issue 17 item 11: a 60 MB upload at 1.5 MB/s got 408 after FLUX_BODY_TIMEOUT_S. The timeout is about
    progress: here 60 KB arrive in 4 KB pieces over about twice the body timeout, and the job is accepted."""
    body = json.dumps({"prompt": "steady upload", **SMALL_JSON}).encode().ljust(60_000)  # JSON allows spaces
    took, answer = _send_body_in_chunks(server, "/api/jobs", body, chunk=4000, every_s=BODY_TIMEOUT / 7)
    assert took > BODY_TIMEOUT * 1.5
    assert answer.startswith(b"HTTP/1.1 202 "), answer[:300]
    job = json.loads(answer.partition(b"\r\n\r\n")[2])
    with server.client() as c:
        c.delete(f"/api/jobs/{job['id']}")


def test_an_upload_that_stops_gets_408_one_body_timeout_after_its_last_byte(server):
    body = b"{" + b" " * 59_999
    took, answer = _send_body_in_chunks(server, "/api/jobs", body, chunk=4000, every_s=0.2, stop_after=20_000)
    assert 1.0 + BODY_TIMEOUT * 0.8 <= took <= 1.0 + BODY_TIMEOUT + 4  # 5 pieces in ~1 s, then nothing
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:300]
    err = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert err["type"] == "request_timeout" and "no part of the request body arrived" in err["message"]


def test_slow_next_request_on_a_keep_alive_connection_is_closed(server):
    s = _connect(server)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    first = b""
    while b'"ok"' not in first:
        first += s.recv(65536)
    assert first.startswith(b"HTTP/1.1 200")
    s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    closed, received = _trickle([s], b"X-Slow: a\r\n", limit_s=HEADER_TIMEOUT + 8)
    assert closed and not received[0]


def test_requests_that_wait_longer_than_the_timeouts_for_the_gpu_still_succeed(server):
    """The clocks stop once the body is in: a generation slower than both timeouts is answered normally."""
    # 2 steps x 1.5 s = 3 s, more than both timeouts together (2.5 s) whatever the rest of the request costs
    with server.client() as c, StepDelay(c, 1.5):
        started = time.monotonic()
        r = c.post("/api/generate-image", data={"prompt": "slow gpu", **SMALL})
        assert r.status_code == 200 and time.monotonic() - started > BODY_TIMEOUT + HEADER_TIMEOUT


def test_service_answers_normally_after_slow_clients_and_logs_no_traceback(server):
    with server.client() as c:
        assert c.post("/api/generate-image", json={"prompt": "after", **SMALL_JSON}).status_code == 200
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
