"""Refuse browser requests from other web sites (403) before any work is done.

Why: with no API key, any web page a user visits could make their browser ``POST`` a plain HTML form to
``http://127.0.0.1:8000/api/generate-image`` (a "simple" cross-origin request needs no CORS preflight), and
the service would run a whole generation for it. Browsers mark every such request with an ``Origin``
header, which a page cannot forge. So a request that carries an ``Origin`` is served only when it is

* the service's own origin (the page at ``/`` calling the API: ``Origin``'s host and port equal the ``Host``
  header; the scheme is not compared, because a TLS-terminating proxy changes it), or
* listed in ``FLUX_CORS_ORIGINS`` (``*`` allows every origin).

Requests without ``Origin`` (curl, scripts, server-to-server, a page's own ``GET``) are unaffected. CORS
preflights (``OPTIONS`` with ``Origin``) from a refused origin get the same 403, so the browser never sends
the real request; allowed origins reach ``CORSMiddleware``, which answers their preflights. It is the
outermost middleware: nothing (not even the body) is read for a refused request. Behind a reverse proxy
that rewrites ``Host``, add the public origin to ``FLUX_CORS_ORIGINS``.
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from app.errors import Forbidden, error_response

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin_key(origin: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an ``Origin`` value; None when it is not one (``null``, garbage)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return parts.scheme, parts.hostname, port if port is not None else _DEFAULT_PORTS[parts.scheme]


def _host_matches(origin: tuple[str, str, int], host_header: str) -> bool:
    """Same host and port as the ``Host`` header (a ``Host`` without a port: the origin scheme's default)."""
    try:
        parts = urlsplit("//" + host_header.strip().lower())
        port = parts.port
    except ValueError:
        return False
    scheme, hostname, origin_port = origin
    return parts.hostname == hostname and (port if port is not None else _DEFAULT_PORTS[scheme]) == origin_port


class OriginGuard:
    def __init__(self, app, allowed_origins: list[str]) -> None:
        self.app = app
        self.allow_all = "*" in allowed_origins
        self.allowed = {key for key in (_origin_key(o) for o in allowed_origins if o != "*") if key is not None}

    def allows(self, origin: str, host_header: str) -> bool:
        if self.allow_all:
            return True
        key = _origin_key(origin)
        return key is not None and (key in self.allowed or _host_matches(key, host_header))

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allow_all:
            return await self.app(scope, receive, send)
        origin = host = None
        for name, value in scope.get("headers", ()):
            if name == b"origin":
                origin = value.decode("latin-1")
            elif name == b"host":
                host = value.decode("latin-1")
        if origin is None or self.allows(origin, host or ""):
            return await self.app(scope, receive, send)
        logger.warning("refused %s %s from origin %r: not this service's origin and not in FLUX_CORS_ORIGINS",
                       scope.get("method"), scope.get("path"), origin)
        response = error_response(Forbidden(
            f"requests from the web origin {origin!r} are not allowed; the service's operator can add it to "
            "FLUX_CORS_ORIGINS", param="Origin"))
        response.headers["Vary"] = "Origin"
        await response(scope, receive, send)
