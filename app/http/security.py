"""Optional API key for ``/api/*``.

Why a bearer token and not a query parameter: query strings end up in access logs and browser history.
The key comes from the settings (``FLUX_API_KEY``); unset means an open service (fine on localhost or
behind a gateway that authenticates). ``HTTPBearer`` also makes /docs show an "Authorize" button.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.errors import Unauthorized

_bearer = HTTPBearer(auto_error=False, description="Required when the service runs with FLUX_API_KEY set.")


async def require_api_key(request: Request,
                          credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    expected = request.app.state.settings.api_key
    if not expected:
        return
    if credentials is None:
        raise Unauthorized("this service requires an API key: send `Authorization: Bearer <key>`")
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise Unauthorized("the API key is not valid")
