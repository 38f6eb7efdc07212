"""Refuse requests whose ``Host`` names no host of this service (400), against DNS rebinding.

Why (issue 17 item 10): a page on ``http://evil.example:8000`` whose name the attacker re-points at
127.0.0.1 after it loaded is, to the browser, the same origin as the service: it may send any request and
read every answer, and the Origin check (``origin_guard.py``) saw ``Origin: http://evil.example:8000`` equal
to ``Host: evil.example:8000`` and let it through (202). Rebinding needs a *name* the attacker controls, and the
browser always sends that name as ``Host``; so, as Starlette's ``TrustedHostMiddleware`` does, a request is
served only when its ``Host`` (port ignored: rebinding keeps the port) is

* a loopback name: ``localhost``, ``127.0.0.1``, ``::1``;
* any IP literal (``192.168.1.5``, ``[fe80::1]``): an origin made of an address cannot be rebound, and this is
  what a client that reaches ``HOST=0.0.0.0`` by address sends, through Docker's port mapping too;
* the name the service is bound to (``FLUX_HOST``/``--host`` when it is a name) or the one the server reports
  for the connection (``scope["server"]``: an IP under uvicorn, ``testserver`` under Starlette's TestClient);
* listed in ``FLUX_ALLOWED_HOSTS`` (``studio.example``, ``*.lan.example`` for its subdomains, ``*``: no check).

Anything else gets 400 ``invalid_host`` naming the header, before any other work. A request without
``Host`` (HTTP/1.0 scripts) is served: browsers always send one. Reaching the service by a name (a LAN name,
a reverse proxy that keeps the public ``Host``, a Kubernetes service) needs that name in ``FLUX_ALLOWED_HOSTS``.
It runs outermost, before the Origin check, which compares ``Origin`` with a ``Host`` checked here.
"""

from __future__ import annotations

import ipaddress
import logging
from urllib.parse import urlsplit

from app.errors import InvalidHost, error_response

logger = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(host_header: str) -> str | None:
    """The name of a ``Host`` value, lower case, without port, brackets or a final dot; None if malformed."""
    text = host_header.strip().lower()
    if not text or any(c in text for c in "/?#@\\ \t"):
        return None
    try:
        parts = urlsplit("//" + text)
        parts.port  # noqa: B018 - raises ValueError on a port that is not a number
    except ValueError:
        return None
    return (parts.hostname or "").rstrip(".") or None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def bound_beyond_loopback_note(bound_host: str, allowed_hosts: list[str]) -> str | None:
    """The start-up line for a service reachable from other machines (``HOST=0.0.0.0``): which Host names it
    answers, so that reaching it by a name that is not listed fails with an explanation, not a surprise."""
    name = host_name(bound_host) or ""
    if name in LOOPBACK_NAMES or "*" in allowed_hosts:
        return None
    listed = ", ".join(allowed_hosts) if allowed_hosts else "none"
    return (f"listening on {bound_host}: requests are answered for Host localhost or an IP address"
            f"{'' if is_ip_literal(name) else ', ' + name}; other names only when listed in FLUX_ALLOWED_HOSTS "
            f"({listed}), e.g. FLUX_ALLOWED_HOSTS=myhost.lan (DNS rebinding protection, docs/http-api.md)")


class HostGuard:
    def __init__(self, app, allowed_hosts: list[str], bound_host: str | None = None) -> None:
        self.app = app
        self.allow_all = "*" in allowed_hosts
        names = {h.lower().rstrip(".") for h in allowed_hosts if h != "*"}
        self.exact = set(LOOPBACK_NAMES) | {n for n in names if not n.startswith("*.")}
        self.suffixes = tuple(n[1:] for n in names if n.startswith("*."))  # "*.lan.example" -> ".lan.example"
        bound = host_name(bound_host or "")
        if bound and not is_ip_literal(bound):  # an address is allowed anyway; "0.0.0.0" is no name
            self.exact.add(bound)

    def allows(self, name: str, server_name: str | None) -> bool:
        return (name in self.exact or is_ip_literal(name) or name == server_name
                or any(name.endswith(suffix) for suffix in self.suffixes))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allow_all:
            return await self.app(scope, receive, send)
        host = None
        for key, value in scope.get("headers", ()):
            if key == b"host":
                host = value.decode("latin-1")
                break
        if host is None:
            return await self.app(scope, receive, send)
        server = scope.get("server") or (None, None)
        name = host_name(host)
        if name is not None and self.allows(name, str(server[0]).lower() if server[0] else None):
            return await self.app(scope, receive, send)
        logger.warning("refused %s %s for Host %r: not a host of this service (FLUX_ALLOWED_HOSTS)",
                       scope.get("method"), scope.get("path"), host)
        response = error_response(InvalidHost(
            f"the Host header {host!r} does not name this service (refused against DNS rebinding); use "
            "localhost or an IP address, or ask the service's operator to add the name to FLUX_ALLOWED_HOSTS",
            param="Host"))
        await response(scope, receive, send)
