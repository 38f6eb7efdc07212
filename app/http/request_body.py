"""Read a request body (JSON, multipart or urlencoded) into the request model, with one rule set for all three.

Why by hand and not FastAPI's ``Form()``/``Body()`` parameters: users send the same fields three ways
(``curl -F``, browser ``FormData``, JSON) and each must mean the same thing and fail the same way. Each
encoding is decoded here into a plain dict of typed values, then one strict pydantic validation applies:

- a field at most once (JSON objects included, at any depth); text is UTF-8 (JSON, form names and values);
- at most ``MAX_FIELDS`` fields and no file parts (the model has a dozen text fields);
- JSON: nesting at most ``MAX_DEPTH`` levels, integers of at most ``MAX_INT_DIGITS`` digits, no ``NaN``/
  ``Infinity`` literals (not JSON); nothing here can raise ``RecursionError`` or ``ValueError`` out of the
  parser, which used to answer a plain 500 and close the keep-alive connection;
- forms: text turned into the value JSON would carry, then the same rules (``"64"`` and ``"64.0"`` are 64
  like 64 and 64.0 in JSON; ``"1.5"`` and ``"true"`` are not integers; ``true/false/on/off/1/0/yes/no`` are
  booleans); a non-scalar field (a list or object) is JSON text; an empty optional field (an empty
  ``<input>``) means "not given".

Every refusal is ``InvalidRequest`` (422, the field in ``param``); a body over the size limit is 413 before
it gets here (``app/http/body_limit.py``).
"""

from __future__ import annotations

import json
import re
import types
import typing
from enum import Enum
from urllib.parse import unquote_plus

from fastapi import Request
from pydantic import BaseModel

from pipelines.errors import InvalidRequest

FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
MAX_FIELDS = 64
MAX_DEPTH = 32
MAX_INT_DIGITS = 40  # far beyond any field's range (seed < 2**63 has 19), far below Python's 4300-digit limit

_INT = re.compile(r"[+-]?\d{1,%d}" % MAX_INT_DIGITS)
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")
_TRUE, _FALSE = {"true", "on", "1", "yes"}, {"false", "off", "0", "no"}


async def read_params(request: Request, model: type[BaseModel]) -> BaseModel:
    """Parse the body into ``model`` (``InvalidRequest`` or pydantic ``ValidationError`` -> 422)."""
    header = request.headers.get("content-type", "")
    ctype = header.split(";")[0].strip().lower()
    raw = await request.body()
    if ctype == "application/json" or ctype.endswith("+json"):
        data = json_object(raw)
    elif ctype == "multipart/form-data":
        data = form_values(model, multipart_pairs(header, raw))
    elif ctype == "application/x-www-form-urlencoded":
        data = form_values(model, urlencoded_pairs(raw))
    else:
        raise InvalidRequest("send the fields as application/json, multipart/form-data or "
                             f"application/x-www-form-urlencoded; got content type {ctype or 'none'!r}")
    return model.model_validate(data)


# ------------------------------------------------------------------ JSON
class _HugeInt:
    """What an over-long integer literal parses to, so the error can name the field it was in."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _parse_int(text: str) -> int | _HugeInt:
    digits = len(text.lstrip("-"))
    return int(text) if digits <= MAX_INT_DIGITS else _HugeInt(digits)


def _no_constant(literal: str) -> float:
    return float("nan")  # NaN/Infinity are not JSON; a NaN is then refused by the model, naming its field


def _unique_object(pairs: list[tuple[str, object]]) -> dict:
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise InvalidRequest(f"`{key}` was sent more than once in a JSON object; send each field once",
                                 param=key)
        obj[key] = value
    return obj


def json_value(raw: bytes | str, what: str = "the JSON body", param: str | None = None) -> object:
    """Parse JSON by the rules above; ``what`` names the text in messages (a form field holding JSON)."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")  # RFC 8259: JSON exchanged between systems is UTF-8
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"{what} is not valid UTF-8 (bad byte at offset {exc.start})", param=param) from None
    try:
        value = json.loads(raw, object_pairs_hook=_unique_object, parse_int=_parse_int, parse_constant=_no_constant)
    except RecursionError:
        raise InvalidRequest(f"{what} is nested too deeply (the limit is {MAX_DEPTH} levels)", param=param) from None
    except json.JSONDecodeError as exc:
        raise InvalidRequest(f"{what} does not parse: {exc}", param=param) from None
    _check_shape(value, what, param)
    return value


def _check_shape(value: object, what: str, param: str | None) -> None:
    """Depth and integer size, walked without recursion (the field is named by its top-level key)."""
    stack: list[tuple[object, int, str | None]] = [(value, 0, param)]
    while stack:
        item, depth, field = stack.pop()
        if isinstance(item, _HugeInt):
            name = f"`{field}`" if field else "a number"
            raise InvalidRequest(f"{name} is an integer of {item.digits} digits in {what}; integers here have at "
                                 f"most {MAX_INT_DIGITS}", param=field)
        if isinstance(item, (dict, list)):
            if depth >= MAX_DEPTH:
                raise InvalidRequest(f"{what} is nested too deeply (the limit is {MAX_DEPTH} levels)", param=field)
            children = item.items() if isinstance(item, dict) else ((None, v) for v in item)
            for key, child in children:
                stack.append((child, depth + 1, field if field is not None or key is None else key))


def json_object(raw: bytes) -> dict:
    if not raw:
        raise InvalidRequest("the JSON body is empty; send an object with the fields, e.g. {\"prompt\": \"...\"}")
    data = json_value(raw)
    if not isinstance(data, dict):
        raise InvalidRequest("the JSON body must be an object with the fields, e.g. {\"prompt\": \"...\"}")
    return data


# ------------------------------------------------------------------ forms
def _too_many() -> InvalidRequest:
    return InvalidRequest(f"the form has more than {MAX_FIELDS} fields; this endpoint takes a dozen")


def _utf8(data: bytes, what: str, param: str | None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not valid UTF-8 (bad byte at offset {exc.start})", param=param) from None


def urlencoded_pairs(raw: bytes) -> list[tuple[str, str]]:
    text = _utf8(raw, "the form body", None)
    items = [item for item in text.split("&") if item]
    if len(items) > MAX_FIELDS:
        raise _too_many()
    pairs = []
    for item in items:
        name, _, value = item.partition("=")
        try:
            name = unquote_plus(name, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise InvalidRequest("a form field name is not valid UTF-8") from None
        try:
            value = unquote_plus(value, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            raise InvalidRequest(f"`{name}` is not valid UTF-8", param=name) from None
        pairs.append((name, value))
    return pairs


def multipart_pairs(header: str, raw: bytes) -> list[tuple[str, str]]:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, options = parse_options_header(header)
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequest("the multipart body has no boundary in its Content-Type")
    parts: list[dict] = []
    current: dict = {}
    header_field = bytearray()
    header_value = bytearray()

    def on_part_begin() -> None:
        nonlocal current
        if len(parts) >= MAX_FIELDS:
            raise _too_many()
        current = {"disposition": b"", "data": bytearray()}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_field.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        if bytes(header_field).lower() == b"content-disposition":
            current["disposition"] = bytes(header_value)
        header_field.clear()
        header_value.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        current["data"].extend(data[start:end])

    def on_part_end() -> None:
        parts.append(current)

    parser = MultipartParser(boundary, {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                                        "on_header_value": on_header_value, "on_header_end": on_header_end,
                                        "on_part_data": on_part_data, "on_part_end": on_part_end})
    try:
        parser.write(raw)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise InvalidRequest(f"the multipart body does not parse: {exc}") from None
    pairs = []
    for part in parts:
        _, disposition = parse_options_header(part["disposition"])
        name = _utf8(disposition.get(b"name", b""), "a form field name", None)
        if not name:
            raise InvalidRequest("a multipart part has no field name (Content-Disposition: form-data; name=...)")
        if b"filename" in disposition:
            raise InvalidRequest(f"`{name}`: file uploads are not accepted; send text fields only", param=name)
        pairs.append((name, _utf8(bytes(part["data"]), f"`{name}`", name)))
    return pairs


def _kind(annotation: object) -> str:
    """How a form's text becomes this field's value: "bool", "int", "float", "str" or "json"."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(args[0]) if len(args) == 1 else "json"
    if typing.get_origin(annotation) is typing.Annotated:
        return _kind(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) is typing.Literal:
        return "str" if all(isinstance(a, str) for a in typing.get_args(annotation)) else "json"
    for cls, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "str")):
        if annotation is cls or (isinstance(annotation, type) and issubclass(annotation, Enum)
                                 and issubclass(annotation, cls)):
            return kind
    return "json"


def _typed(kind: str, text: str, name: str) -> object:
    """The form text as the value JSON would carry; text that does not fit is left for the model to refuse."""
    if kind == "int" and _INT.fullmatch(text):
        return int(text)
    if kind == "int" and _FLOAT.fullmatch(text) and float(text).is_integer():
        return float(text)  # "64.0" means what 64.0 means in JSON: the model takes it as 64
    if kind == "float" and _FLOAT.fullmatch(text):
        return float(text)
    if kind == "bool" and text.lower() in _TRUE | _FALSE:
        return text.lower() in _TRUE
    if kind == "json":
        return json_value(text, f"`{name}` (a JSON value in a form field)", name)
    return text


_ABSENT = object()


def form_values(model: type[BaseModel], pairs: list[tuple[str, str]]) -> dict:
    data: dict = {}
    for name, text in pairs:
        if name in data:
            raise InvalidRequest(f"`{name}` was sent more than once; send each field once", param=name)
        field = model.model_fields.get(name)
        if field is None:  # unknown: kept, so the model refuses it by name
            data[name] = text
        elif text == "" and not field.is_required():
            data[name] = _ABSENT  # dropped below, after the duplicate check saw it
        else:
            data[name] = _typed(_kind(field.annotation), text, name)
    return {k: v for k, v in data.items() if v is not _ABSENT}
