"""Every error a client can see, mapped in one place to one status code and one JSON envelope.

Why one place (vLLM's ``ErrorResponse``): the engine raises typed errors (``pipelines.errors``), the HTTP
layer adds a few of its own below, and this module alone decides the status code, so a client always gets
``{"error": {"type", "message", "param"}}`` and never a traceback. Unexpected exceptions become a 500 with
a generic message; their traceback goes to the log (``logger.exception``), not to the client.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from pipelines.errors import (
    AdapterError,
    Cancelled,
    ConfigError,
    DeadlineExceeded,
    FluxServiceError,
    InvalidRequest,
    ModelUnavailable,
    OutOfMemory,
    Overloaded,
)
from training.errors import DatasetTooLarge, NameTaken, RunNotFound

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------ errors only the HTTP layer raises
class NotReady(FluxServiceError):
    """The model is not loaded yet, or the service is draining for shutdown."""

    type = "not_ready"


class ShuttingDown(NotReady):
    """The service received SIGTERM: this request was not started (or was stopped at the grace) and may be sent
    again once the service (or another replica) is back. Retry-After is a guess at a restart's duration."""

    type = "shutting_down"
    retry_after_s = 10.0


class StorageError(NotReady):
    """The job database or data folder cannot be used now (locked by another process, disk full, damaged and not
    repaired): a new job is not accepted, a finished job cannot be looked up, an image could not be saved."""

    type = "storage_unavailable"


class NotFound(FluxServiceError):
    type = "not_found"


class ImageCorrupt(FluxServiceError):
    """A stored job image no longer matches the sha256 recorded when it was written (changed or damaged on disk):
    500, because the fault is the server's storage, and the file is not served (a wrong picture is worse)."""

    type = "image_corrupt"


class Conflict(FluxServiceError):
    """The resource exists but is not in a state that allows this (e.g. the image of a running job)."""

    type = "conflict"


class Unauthorized(FluxServiceError):
    type = "unauthorized"


class Forbidden(FluxServiceError):
    """A browser request from a web origin the service does not allow (``app/http/origin_guard.py``)."""

    type = "forbidden_origin"


class InvalidHost(FluxServiceError):
    """A ``Host`` header that names no host of this service (``app/http/host_guard.py``: DNS rebinding)."""

    type = "invalid_host"


class PayloadTooLarge(FluxServiceError):
    type = "payload_too_large"


class RetryLater(Overloaded):
    """Overloaded, with the number of seconds worth waiting (sent as ``Retry-After``)."""

    def __init__(self, message: str, *, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


# order matters: the first matching class wins (subclasses before their bases)
_STATUS: list[tuple[type[FluxServiceError], int]] = [
    (DatasetTooLarge, 413),  # a training upload with more files or unpacked bytes than its limits
    (NameTaken, 409),  # a training's LoRA name or task is in use
    (RunNotFound, 404),  # no such training
    (InvalidRequest, 422),  # UnknownTask included
    (NotFound, 404),
    (Conflict, 409),
    (Unauthorized, 401),
    (Forbidden, 403),
    (InvalidHost, 400),
    (PayloadTooLarge, 413),
    (Overloaded, 503),
    (OutOfMemory, 503),
    (NotReady, 503),
    (ModelUnavailable, 503),
    (Cancelled, 503),  # only seen by a client when the service shuts down under its request
    (DeadlineExceeded, 504),
    (ImageCorrupt, 500),
    (AdapterError, 500),  # every adapter is checked at start-up; one failing per request is our bug
    (ConfigError, 500),
]


def status_for(exc: FluxServiceError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


class ErrorBody(BaseModel):
    type: str
    message: str
    param: str | None


class ErrorEnvelope(BaseModel):
    """What every 4xx/5xx answer carries (documented on every status of every route in the OpenAPI schema)."""

    error: ErrorBody


def envelope(type_: str, message: str, param: str | None = None) -> dict:
    return {"error": {"type": type_, "message": message, "param": param}}


def error_body(exc: FluxServiceError) -> dict:
    """The inner ``error`` object; also what a failed job reports as its ``error``."""
    return envelope(exc.type, exc.message, exc.param)["error"]


def error_response(exc: FluxServiceError) -> JSONResponse:
    status = status_for(exc)
    headers: dict[str, str] = {}
    if status == 503:
        retry = getattr(exc, "retry_after_s", 1.0 if isinstance(exc, (OutOfMemory, Overloaded)) else 5.0)
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500 and not isinstance(exc, (Overloaded, OutOfMemory, NotReady, Cancelled, DeadlineExceeded)):
        logger.error("request failed with %s: %s", exc.type, exc.message)
    return JSONResponse(envelope(exc.type, exc.message, exc.param), status_code=status, headers=headers)


def validation_message(err: dict) -> tuple[str, str | None]:
    """One pydantic error as our message style: the parameter in backticks, the bad value quoted."""
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path", "form")]
    param = loc[0] if loc else None
    name = f"`{'.'.join(loc)}`" if loc else "the request body"
    if err.get("type") == "missing":
        return f"{name} is required", param
    if err.get("type") == "extra_forbidden":
        return (f"{name} is not a parameter of this endpoint; file paths and unknown fields are refused "
                "(name a `task` instead)", param)
    if err.get("input", 0) is None and str(err.get("type", "")).endswith("_type"):
        return f"{name} is null; an optional field is absent or has a value: leave it out for its default", param
    if err.get("type") == "string_pattern_mismatch" and err.get("ctx", {}).get("pattern") == r"\S":
        return f"{name} must not be blank", param
    if err.get("type") == "multiple_of":  # the engine's own words for the same rule (page: errortext.js)
        return f"{name} must be a multiple of {err['ctx']['multiple_of']}, got {err.get('input')!r}", param
    got = ""
    if "input" in err and not isinstance(err["input"], (dict, list)):
        text = repr(err["input"])
        if len(text) > 60:  # a 2001-character prompt is not worth echoing back in full
            text = f"{text[:50]}... ({len(text)} characters)"
        got = f", got {text}"
    return f"{name}: {err.get('msg', 'invalid value')}{got}", param


def _validation_response(errors: list) -> JSONResponse:
    message, param = validation_message(errors[0]) if errors else ("invalid request", None)
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem(s))"
    return JSONResponse(envelope("invalid_request", message, param), status_code=422)


_HTTP_TYPES = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
               413: "payload_too_large"}


def install_error_handlers(app: FastAPI) -> None:
    async def on_service_error(_req: Request, exc: FluxServiceError) -> JSONResponse:
        return error_response(exc)

    async def on_request_validation(_req: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_response(list(exc.errors()))

    async def on_pydantic_validation(_req: Request, exc: ValidationError) -> JSONResponse:
        return _validation_response(exc.errors(include_url=False))

    async def on_http_exception(_req: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = _HTTP_TYPES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = "no such route; see /docs for the API"
        return JSONResponse(envelope(type_, message), status_code=exc.status_code, headers=exc.headers)

    async def on_client_disconnect(req: Request, _exc: ClientDisconnect) -> Response:
        # the client left (or was cut off by FLUX_BODY_TIMEOUT_S) before its body was read: not our error
        logger.info("client disconnected before its request body was read (%s %s)", req.method, req.url.path)
        return Response(status_code=400)  # never delivered: the connection is gone

    async def on_unexpected(_req: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error while serving a request")
        return JSONResponse(envelope("internal_error", "internal server error; the log has the details"),
                            status_code=500)

    app.add_exception_handler(FluxServiceError, on_service_error)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(ValidationError, on_pydantic_validation)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    app.add_exception_handler(ClientDisconnect, on_client_disconnect)
    app.add_exception_handler(Exception, on_unexpected)
