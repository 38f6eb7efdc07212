"""One input rule set for every encoding, and hostile bodies answered with a 4xx envelope (issue 8, items 3-4).

Against a real uvicorn server, because two of the failures were about HTTP itself: a hostile JSON body used to
answer a plain 500 and the *next* request on the same keep-alive connection was sometimes reset. The
keep-alive tests therefore send the hostile request and a good one over one socket (``http.client`` with
reconnection made impossible) and require both answers.

The rules, whatever the encoding (JSON, multipart, urlencoded): a field at most once; text is UTF-8; an
integer field takes an integer as JSON Schema defines it (64 or 64.0; not a boolean, not 1.5, not "64" in
JSON), a number field a finite number, a boolean field a boolean; an optional field is absent or has a value
(JSON ``null`` is refused: leave the field out); no file parts; at most 64 fields. Every refusal is a 422
(413 for a body over the size limit) with the envelope.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlparse

import pytest

from tests.http_support import SMALL, pixels, png_info

ROUTES = ["/api/generate-image", "/api/jobs"]
GOOD = json.dumps({"prompt": "p", "width": 64, "height": 64, "num_inference_steps": 1}).encode()


def envelope_of(status: int, body: bytes, want_status: int, param: str | None = "ANY") -> dict:
    assert status == want_status, body[:500]
    err = json.loads(body)["error"]
    assert set(err) == {"type", "message", "param"}
    assert "Traceback" not in err["message"]
    if param != "ANY":
        assert err["param"] == param, err
    return err


class KeepAlive:
    """One TCP connection; a request after the server closed it fails instead of silently reconnecting."""

    def __init__(self, url: str) -> None:
        u = urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port, timeout=60)
        self.conn.connect()
        self.sock = self.conn.sock
        self.conn.auto_open = 0  # never reconnect: a reset connection must show up as an error

    def post(self, path: str, body: bytes, ctype: str = "application/json") -> tuple[int, bytes]:
        self.conn.request("POST", path, body=body, headers={"Content-Type": ctype})
        resp = self.conn.getresponse()
        data = resp.read()
        assert self.conn.sock is self.sock, "the server closed the keep-alive connection"
        return resp.status, data

    def close(self) -> None:
        self.conn.close()


@pytest.fixture()
def keepalive(server):
    k = KeepAlive(server.url)
    yield k
    k.close()


def _good_then_cleanup(keepalive, route: str, client) -> None:
    status, data = keepalive.post(route, GOOD)
    assert status == (200 if route == "/api/generate-image" else 202), data[:300]
    if route == "/api/jobs":
        client.delete(f"/api/jobs/{json.loads(data)['id']}")


# ------------------------------------------------------------------ item 3: hostile JSON
@pytest.mark.parametrize("route", ROUTES)
def test_json_nested_1000_deep_is_422_and_the_connection_stays_usable(keepalive, client, route):
    body = b'{"prompt": ' + b"[" * 1000 + b"]" * 1000 + b"}"
    err = envelope_of(*keepalive.post(route, body), 422)
    assert "nest" in err["message"]
    _good_then_cleanup(keepalive, route, client)


@pytest.mark.parametrize("route", ROUTES)
def test_json_integer_of_4300_digits_is_422_and_the_connection_stays_usable(keepalive, client, route):
    body = b'{"prompt": "p", "seed": ' + b"9" * 4300 + b"}"
    err = envelope_of(*keepalive.post(route, body), 422, "seed")
    assert "digits" in err["message"] and len(err["message"]) < 300
    _good_then_cleanup(keepalive, route, client)


def test_json_nan_and_infinity_literals_are_422(client):
    for literal in ("NaN", "Infinity", "-Infinity"):
        r = client.post("/api/generate-image", content=f'{{"prompt": "p", "guidance_scale": {literal}}}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["param"] == "guidance_scale", r.text


def test_json_float_overflowing_to_infinity_is_422(client):
    r = client.post("/api/generate-image", content='{"prompt": "p", "guidance_scale": 1e400}',
                    headers={"content-type": "application/json"})
    envelope_of(r.status_code, r.content, 422, "guidance_scale")


# ------------------------------------------------------------------ item 4: duplicates, in every encoding
def test_duplicate_json_field_is_422_like_a_duplicate_form_field(client):
    r = client.post("/api/generate-image", content='{"prompt": "", "prompt": "p"}',
                    headers={"content-type": "application/json"})
    err = envelope_of(r.status_code, r.content, 422, "prompt")
    assert "more than once" in err["message"]
    form = client.post("/api/generate-image", content="prompt=&prompt=p",
                       headers={"content-type": "application/x-www-form-urlencoded"})
    assert "more than once" in envelope_of(form.status_code, form.content, 422, "prompt")["message"]


# ------------------------------------------------------------------ item 4: UTF-8, in every encoding
def test_invalid_utf8_is_422_in_json_urlencoded_and_multipart(client):
    bad = b"caf\xe9"
    cases = [
        (b'{"prompt": "' + bad + b'"}', "application/json"),
        (b"prompt=caf%E9", "application/x-www-form-urlencoded"),
        (b"prompt=" + bad, "application/x-www-form-urlencoded"),
        (b'--XX\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' + bad + b"\r\n--XX--\r\n",
         "multipart/form-data; boundary=XX"),
    ]
    for body, ctype in cases:
        r = client.post("/api/generate-image", content=body, headers={"content-type": ctype})
        err = envelope_of(r.status_code, r.content, 422)
        assert "UTF-8" in err["message"], (ctype, err)


def test_valid_utf8_chinese_prompt_is_read_intact_from_multipart_and_urlencoded(client):
    """translate=off: the prompt reaches the model exactly as typed, so the PNG's record shows the decoding."""
    from urllib.parse import quote

    prompt = "科普主持人"
    for body, ctype in [
        (f"prompt={quote(prompt)}&width=64&height=64&num_inference_steps=1&translate=off".encode(),
         "application/x-www-form-urlencoded"),
        (b'--XX\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n' + prompt.encode() +
         b'\r\n--XX\r\nContent-Disposition: form-data; name="width"\r\n\r\n64'
         b'\r\n--XX\r\nContent-Disposition: form-data; name="height"\r\n\r\n64'
         b'\r\n--XX\r\nContent-Disposition: form-data; name="num_inference_steps"\r\n\r\n1'
         b'\r\n--XX\r\nContent-Disposition: form-data; name="translate"\r\n\r\noff\r\n--XX--\r\n',
         "multipart/form-data; boundary=XX"),
    ]:
        r = client.post("/api/generate-image", content=body, headers={"content-type": ctype})
        assert r.status_code == 200, r.text
        assert png_info(r.content)[1]["prompt"] == prompt


# ------------------------------------------------------------------ item 4: types, in every encoding
@pytest.mark.parametrize("value", [True, False, 1.5, "1", None, [1], {"a": 1}])
def test_integer_field_in_json_takes_only_an_integer(client, value):
    r = client.post("/api/generate-image", json={"prompt": "p", "num_inference_steps": value})
    err = envelope_of(r.status_code, r.content, 422, "num_inference_steps")
    assert "`num_inference_steps`" in err["message"]


@pytest.mark.parametrize("value", ["true", "1.5", "1e-1", " ", "0x10", "1_0"])
def test_integer_field_in_a_form_takes_only_an_integer(client, value):
    r = client.post("/api/generate-image", data={"prompt": "p", "num_inference_steps": value})
    envelope_of(r.status_code, r.content, 422, "num_inference_steps")


@pytest.mark.parametrize("value", [True, "0.5", None])
def test_number_field_in_json_refuses_booleans_strings_and_null(client, value):
    r = client.post("/api/generate-image", json={"prompt": "p", "guidance_scale": value})
    envelope_of(r.status_code, r.content, 422, "guidance_scale")


@pytest.mark.parametrize("value", ["1", 0, "true", None])
def test_boolean_field_in_json_takes_only_true_or_false(client, value):
    r = client.post("/api/generate-image", json={"prompt": "p", "use_model_manager": value})
    envelope_of(r.status_code, r.content, 422, "use_model_manager")


@pytest.mark.parametrize("value", ["maybe", "2"])
def test_boolean_field_in_a_form_refuses_other_words(client, value):
    r = client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": value})
    envelope_of(r.status_code, r.content, 422, "use_model_manager")


def test_string_field_in_json_refuses_a_number(client):
    r = client.post("/api/generate-image", json={"prompt": 5})
    envelope_of(r.status_code, r.content, 422, "prompt")


def test_an_integral_number_is_an_integer_in_json_and_in_forms_as_json_schema_says(client):
    """JSON Schema: 1.0 is an integer. Schema validators and generated clients accept it, so the server does."""
    body = client.post("/api/generate-image", json={"prompt": "p", "width": 64.0, "height": 64, "seed": 3.0,
                                                    "num_inference_steps": 1.0})
    form = client.post("/api/generate-image", data={"prompt": "p", "width": "64.0", "height": "64", "seed": "3",
                                                    "num_inference_steps": "1.0"})
    assert body.status_code == form.status_code == 200, (body.text, form.text)
    assert body.headers["x-steps"] == form.headers["x-steps"] == "1"
    assert pixels(body.content) == pixels(form.content)


def test_integral_values_mean_the_same_in_json_and_forms(client):
    """64 in JSON and "64" in a form are the same request: same PNG for the same seed."""
    form = client.post("/api/generate-image", data={"prompt": "p", "seed": "3", "guidance_scale": "2", **SMALL})
    body = client.post("/api/generate-image", json={"prompt": "p", "seed": 3, "guidance_scale": 2, "width": 64,
                                                    "height": 64, "num_inference_steps": 2})
    assert form.status_code == body.status_code == 200
    assert pixels(form.content) == pixels(body.content)
    assert form.headers["x-guidance-scale"] == body.headers["x-guidance-scale"] == "2"


# ------------------------------------------------------------------ item 4: shape limits, documented statuses
@pytest.mark.parametrize("encoding", ["multipart", "urlencoded", "json"])
def test_more_than_64_fields_is_422_in_every_encoding(client, encoding):
    fields = {"prompt": "p", **{f"f{i}": "x" for i in range(70)}}
    if encoding == "json":
        r = client.post("/api/generate-image", json=fields)
    elif encoding == "urlencoded":
        r = client.post("/api/generate-image", data=fields)
    else:
        r = client.post("/api/generate-image", data=fields, files={"prompt2": (None, "p")})
    envelope_of(r.status_code, r.content, 422)


def test_file_upload_is_422_naming_the_field(client):
    r = client.post("/api/generate-image", data={"prompt": "p"}, files={"lora": ("x.safetensors", b"123")})
    err = envelope_of(r.status_code, r.content, 422, "lora")
    assert "file" in err["message"]


def test_json_null_for_an_optional_field_is_422_saying_to_leave_it_out(client):
    r = client.post("/api/generate-image", json={"prompt": "p", "width": None})
    err = envelope_of(r.status_code, r.content, 422, "width")
    assert "leave" in err["message"]


def test_empty_optional_form_field_still_means_absent(client):
    """An empty <input> in an HTML form is not sent as a value: the default applies (documented)."""
    r = client.post("/api/generate-image", data={"prompt": "p", "seed": "", **SMALL})
    assert r.status_code == 200, r.text


def test_long_bad_value_is_not_echoed_in_full(client):
    r = client.post("/api/generate-image", json={"prompt": "x" * 2001})
    err = envelope_of(r.status_code, r.content, 422, "prompt")
    assert len(err["message"]) < 400
