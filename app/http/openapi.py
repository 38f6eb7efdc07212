"""The OpenAPI document as the contract: what ``/docs``, generated clients and schemathesis read.

Why this module: FastAPI derives most of the document from the routes, but four things it cannot know.

1. The request body is read by hand (``app/http/request_body.py``), so its schema is put in here from the same
   pydantic model that validates it, with the limits of the settings in force. Only ``application/json`` is
   listed: it is what generated clients should send (typed fields, lists as lists), and every operation with
   two or more request content types comes out of openapi-python-client 0.29 unimportable (its template types
   the body ``... | Unset`` without importing ``Unset``), which is how issue 9 found it. Multipart and
   urlencoded forms (``curl -F``, ``FormData``) are accepted with the same fields and rules and are described
   in prose (the API description, docs/http-api.md). Swagger UI shows the JSON body with a working example.
2. Errors: every status a route can return is listed with the error envelope (``error_responses``; 403 for
   a refused ``Origin`` on every route and 408 for a slow body on routes with one are added here, since
   middleware and the HTTP protocol send them); FastAPI's own 422 shape, which this service never sends,
   is removed.
3. Security follows the configuration: Bearer auth and 401 only when ``FLUX_API_KEY`` is set.
4. PNG answers are binary with every ``X-*`` header described, from the table the route sends them from.
"""

from __future__ import annotations

from fastapi import FastAPI

from app.errors import ErrorEnvelope

#: what each error status means, wherever it is documented (docs/http-api.md has the same table)
STATUS_TEXT = {
    401: "`FLUX_API_KEY` is set and `Authorization: Bearer <key>` is missing or wrong",
    403: "the request carries an `Origin` that is neither this service's nor in `FLUX_CORS_ORIGINS`",
    404: "unknown or expired job",
    408: "the body did not arrive within `FLUX_BODY_TIMEOUT_S` after the headers",
    409: "the job has no image (yet): it has not succeeded",
    413: "the body is larger than `FLUX_MAX_BODY_BYTES`",
    422: "a field is missing, malformed, out of bounds or inconsistent (`param` names it)",
    500: "a bug or a broken adapter; the log has the details",
    503: "queue full, out of memory (retry), not ready yet, or shutting down; see `Retry-After`",
    504: "the request passed its deadline (`FLUX_REQUEST_TIMEOUT_S`, queue wait included) and was stopped",
}
_HEADERS = {
    503: {"Retry-After": {"description": "Seconds worth waiting before retrying.", "schema": {"type": "integer"}}},
    401: {"WWW-Authenticate": {"description": "`Bearer`", "schema": {"type": "string"}}},
}
BODY_SCHEMA = "GenerateParams"
JSON_EXAMPLE = {"prompt": "科普主持人，专业形象，微笑"}


def error_responses(*codes: int) -> dict:
    """``responses=`` entries for these statuses, each with the error envelope (and its headers)."""
    return {code: {"model": ErrorEnvelope, "description": STATUS_TEXT[code], **({"headers": _HEADERS[code]}
                                                                              if code in _HEADERS else {})}
            for code in codes}


def png_response(description: str, header_names: list[str], header_docs: dict[str, str]) -> dict:
    """A 200 ``image/png`` answer (binary) with its ``X-*`` headers; one without a description still appears."""
    headers = {name: {"description": header_docs.get(name, "see docs/http-api.md"), "required": name in header_docs,
                      "schema": {"type": "string"}}
               for name in header_names if name.startswith("X-")}
    return {"description": description, "headers": headers,
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}


def request_body() -> dict:
    """``openapi_extra`` of the two routes that take the generation fields (schemas filled in by ``install``)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{BODY_SCHEMA}"}, "example": JSON_EXAMPLE},
    }}}


def install(app: FastAPI, *, params_model, api_key_set: bool) -> None:
    """Replace ``app.openapi`` with a builder that completes FastAPI's document as described above."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        schemas = components.setdefault("schemas", {})
        body = params_model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(body.pop("$defs", {}))
        schemas[BODY_SCHEMA] = body
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                _fix_operation(operation, api_key_set)
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        if not api_key_set:
            components.pop("securitySchemes", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _envelope(code: int) -> dict:
    return {"description": STATUS_TEXT[code],
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorEnvelope"}}}}


def _fix_operation(operation: dict, api_key_set: bool) -> None:
    responses = operation.setdefault("responses", {})
    responses.setdefault("403", _envelope(403))  # app/http/origin_guard.py, before any route
    if "requestBody" in operation:
        responses.setdefault("408", _envelope(408))  # app/http/server_guard.py, while the body arrives
    default_422 = responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
    if default_422.get("$ref", "").endswith("/HTTPValidationError"):
        del responses["422"]  # FastAPI's own shape for path parameters; a string id never fails it
    if not api_key_set:
        operation.pop("security", None)
