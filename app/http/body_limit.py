"""Refuse request bodies over ``settings.max_body_bytes`` with 413, before they are read into memory.

Why an ASGI middleware and not a check in the route: the multipart parser would already have buffered the
body by then. A declared ``Content-Length`` over the limit is refused at once; a chunked body is counted
as it streams and the read fails with ``PayloadTooLarge`` (mapped to 413 in ``app/errors.py``).
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from app.errors import PayloadTooLarge, envelope


class BodyLimit:
    def __init__(self, app, max_bytes: int, overrides: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_max_bytes = max_bytes
        self.max_bytes = max_bytes
        #: exact path -> its own limit (POST /api/trainings takes photos: megabytes, not a JSON body)
        self.overrides = dict(overrides or {})

    def _message(self) -> str:
        return f"the request body is larger than the limit of {self.max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.overrides.get(scope.get("path", ""), self.default_max_bytes)
        if limit != self.default_max_bytes:
            return await _Limited(self.app, limit)(scope, receive, send)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_bytes
                except ValueError:
                    too_big = False
                if too_big:
                    response = JSONResponse(envelope("payload_too_large", self._message()), status_code=413,
                                            headers={"Connection": "close"})
                    return await response(scope, receive, send)
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(self._message())
            return message

        return await self.app(scope, limited_receive, send)


class _Limited(BodyLimit):
    """The same check with a path's own limit (no overrides of its own, so no recursion)."""
