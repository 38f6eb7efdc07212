"""Optional API key for ``/api/*``.

Why a bearer token and not a query parameter: query strings end up in access logs and browser history.
The key comes from the settings (``FLUX_API_KEY``); unset means an open service (fine on localhost or
behind a gateway that authenticates). ``HTTPBearer`` also makes /docs show an "Authorize" button.

Why also an ASGI guard (``ApiKeyGuard``, issue 17): a route dependency runs after FastAPI has parsed the
body, so an unauthenticated 246 MB upload to ``POST /api/trainings`` was read whole before its 401. The
guard answers 401 from the request head alone, before the body limit and any parsing, and closes the
connection so the rest of the body is never received. The dependency stays: it documents the scheme.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers

from app.errors import Unauthorized, error_response

MISSING = "this service requires an API key: send `Authorization: Bearer <key>`"
WRONG = "the API key is not valid"

_bearer = HTTPBearer(auto_error=False, description="Required when the service runs with FLUX_API_KEY set.")


async def require_api_key(request: Request,
                          credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    expected = request.app.state.settings.api_key
    if not expected:
        return
    if credentials is None:
        raise Unauthorized(MISSING)
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise Unauthorized(WRONG)


def key_problem(authorization: str | None, expected: str) -> str | None:
    """What is wrong with an ``Authorization`` header for this key (None: it is right), as HTTPBearer reads it."""
    scheme, _, token = (authorization or "").strip().partition(" ")
    if not authorization or scheme.lower() != "bearer" or not token.strip():
        return MISSING
    return None if secrets.compare_digest(token.strip().encode(), expected.encode()) else WRONG


class ApiKeyGuard:
    """``/api/*`` requests without the right key get 401 (``Connection: close``) before their body is read."""

    def __init__(self, app, api_key: str | None) -> None:
        self.app, self.api_key = app, api_key

    async def __call__(self, scope, receive, send):
        if (not self.api_key or scope["type"] != "http" or scope.get("method") == "OPTIONS"
                or not scope.get("path", "").startswith("/api/")):
            return await self.app(scope, receive, send)
        problem = key_problem(Headers(scope=scope).get("authorization"), self.api_key)
        if problem is None:
            return await self.app(scope, receive, send)
        response = error_response(Unauthorized(problem))
        response.headers["Connection"] = "close"
        return await response(scope, receive, send)
