"""405 answers list every method of their path in ``Allow`` (RFC 9110), not only the first route's.

Why (issue 17 item 20): FastAPI makes one route per method, so ``GET`` and ``DELETE /api/jobs/{id}`` are two
routes; Starlette's router answers a method neither has from the first route whose path matched, and
``OPTIONS /api/jobs/{id}`` said ``Allow: GET``: a client (or schemathesis' ``allow_header_conformance``)
was told DELETE does not exist. This handler, registered for status 405, asks every route which methods it serves
at the path and answers the service's JSON envelope with all of them.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.routing import Match, Mount

from app.errors import envelope

#: the methods a client may ask for; a route "serves" one when the router would fully match it
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: FastAPI, scope) -> list[str]:
    """Every method some route of ``app`` serves at ``scope``'s path: asked of each route through
    ``matches()`` (public on every Starlette route, FastAPI's included routers too) with each method in turn.
    Mounts are the static folders (``/static``, ``/docs-assets``): GET and HEAD."""
    # the request as the app received it (a mount's handler sees its own root_path)
    scope = {"type": "http", "path": scope["path"], "root_path": scope.get("app_root_path", scope.get("root_path", "")),
             "method": scope["method"], "headers": scope.get("headers", []), "query_string": b""}
    methods: set[str] = set()
    for route in app.router.routes:
        if isinstance(route, Mount):
            if route.matches(scope)[0] is Match.FULL:
                methods |= {"GET", "HEAD"}
            continue
        methods |= {m for m in METHODS if route.matches({**scope, "method": m})[0] is Match.FULL}
    return [m for m in METHODS if m in methods]


def install_allow(app: FastAPI) -> None:
    async def method_not_allowed(request: Request, _exc: Exception) -> JSONResponse:
        methods = allowed_methods(request.app, request.scope)
        message = (f"{request.method} is not a method of {request.url.path}; it takes {', '.join(methods)}"
                   if methods else "Method Not Allowed")
        return JSONResponse(envelope("method_not_allowed", message), status_code=405,
                            headers={"Allow": ", ".join(methods)})

    app.add_exception_handler(405, method_not_allowed)
