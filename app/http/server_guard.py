"""Cut off slow clients and bound open connections (issue 8 item 5: 300 slow-header and 300 slow-body
connections were all still open after 65 s).

Why a uvicorn protocol class and not an ASGI middleware: a client that never finishes its headers never
reaches the ASGI app, and uvicorn 0.54 has no header timeout (``timeout_keep_alive`` only runs *between*
requests, and any byte received cancels it) and no body timeout. ``GuardedH11Protocol`` is uvicorn's own
h11 protocol with three additions, each a setting:

* ``FLUX_HEADER_TIMEOUT_S``: from the moment a connection is ready for a request (opened, or the previous
  response finished) until the request's headers are complete. Past it the connection is closed (there is
  no request to answer yet). A connection that sends nothing at all is closed the same way.
* ``FLUX_BODY_TIMEOUT_S``: from the end of the headers until the end of the body. Past it the client gets
  ``408`` with the JSON envelope and ``Connection: close`` (just a close if a response had started), and
  the app's ``receive()`` reports a disconnect, so nothing waits on the rest of the body.
* ``FLUX_MAX_CONNECTIONS``: a request that arrives while more connections than this are open gets ``503``
  with the envelope and ``Retry-After`` (uvicorn's ``limit_concurrency`` idea, which answers plain text and
  also counts the refused connection itself). Slow connections free their place within the timeouts above.

Long work is unaffected: once a request's body is in, it may wait in the queue and stream events for as
long as ``FLUX_REQUEST_TIMEOUT_S`` allows. We always use h11 (never httptools) so what is tested is what
runs; an image takes seconds, parsing speed does not matter here.

How it is used: ``flux-service serve`` passes ``server_options(settings)`` to uvicorn; with uvicorn's own
command line, add ``--http app.http.server_guard:GuardedH11Protocol`` (the limits then come from the same
``FLUX_*`` environment as the app). Plain ``uvicorn app.main:app`` runs without these bounds.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        return cls(settings.header_timeout_s, settings.body_timeout_s, settings.max_connections)


def _json_bytes(type_: str, message: str) -> bytes:
    return json.dumps({"error": {"type": type_, "message": message, "param": None}}).encode()


class GuardedH11Protocol(H11Protocol):
    #: set by ``guarded_protocol(settings)``; None: read the ``FLUX_*`` settings on first use (uvicorn CLI)
    limits: Limits | None = None

    @classmethod
    def _limits(cls) -> Limits:
        if cls.limits is None:
            from pipelines.settings import load_settings

            cls.limits = Limits.from_settings(load_settings())
        return cls.limits

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._guard = self._limits()
        self._header_timer = None
        self._body_timer = None
        self._timed_cycle = None
        app = self.app

        async def guarded_app(scope, receive, send):
            if len(self.connections) > self._guard.max_connections:
                return await self._too_many_connections(send)
            return await app(scope, receive, send)

        self.app = guarded_app

    # ------------------------------------------------------------------ uvicorn's protocol events
    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._track_request()

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request's headers are due within the header timeout
        super().on_response_complete()  # may parse a pipelined request at once
        self._track_request()

    def connection_lost(self, exc) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._body_timer = None
        super().connection_lost(exc)

    # ------------------------------------------------------------------ timers
    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self._guard.header_timeout_s, self._headers_too_slow)

    def _track_request(self) -> None:
        """After h11 parsed what arrived: a new request stops the header clock and starts the body clock;
        a complete body stops the body clock."""
        cycle = self.cycle
        if cycle is None:
            return
        if cycle is not self._timed_cycle:
            self._timed_cycle = cycle
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None
            if cycle.more_body:
                self._body_timer = self.loop.call_later(self._guard.body_timeout_s, self._body_too_slow, cycle)
        elif self._body_timer is not None and not cycle.more_body:
            self._body_timer.cancel()
            self._body_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        logger.info("closed a connection from %s: no complete request headers within %gs (FLUX_HEADER_TIMEOUT_S)",
                    self._peer(), self._guard.header_timeout_s)
        try:
            self.conn.send(h11.ConnectionClosed())
        except h11.LocalProtocolError:
            pass
        self.transport.close()

    def _body_too_slow(self, cycle) -> None:
        self._body_timer = None
        if self.transport.is_closing() or cycle is not self.cycle or not cycle.more_body:
            return
        logger.info("408 to %s %s %s: request body not complete within %gs (FLUX_BODY_TIMEOUT_S)", self._peer(),
                    cycle.scope["method"], cycle.scope["path"], self._guard.body_timeout_s)
        if not cycle.response_started and not cycle.disconnected:
            body = _json_bytes("request_timeout", f"the request body did not arrive within "
                                                  f"{self._guard.body_timeout_s:g} seconds")
            try:
                out = self.conn.send(h11.Response(status_code=408, reason=b"Request Timeout", headers=[
                    *self.server_state.default_headers, (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")]))
                out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
                self.transport.write(out)
            except h11.LocalProtocolError:
                pass
        cycle.disconnected = True  # the app's receive() now says http.disconnect; its send() does nothing
        cycle.message_event.set()
        self.transport.close()

    async def _too_many_connections(self, send) -> None:
        limit = self._guard.max_connections
        logger.warning("503 to %s: %d connections open, the limit is %d (FLUX_MAX_CONNECTIONS)", self._peer(),
                       len(self.connections), limit)
        body = _json_bytes("overloaded", f"too many open connections (limit {limit}); retry later")
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "a client"


def guarded_protocol(settings) -> type[GuardedH11Protocol]:
    """The protocol class with these settings' limits (``flux-service serve``)."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": Limits.from_settings(settings)})


def server_options(settings) -> dict:
    """Keyword arguments for ``uvicorn.run``/``uvicorn.Config`` that apply the limits above."""
    return {"http": guarded_protocol(settings)}
