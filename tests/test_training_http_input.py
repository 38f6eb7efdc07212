"""``POST /api/trainings`` refuses hostile or careless uploads with a 4xx naming the field, before a 202 and
before any photo is decoded (issue 17 items 4, 5, 6, 13, 14, 15, 18), against the real uvicorn server of
tests/test_training_http.py. Nothing here trains: every request is refused."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.training_support import png_bomb, red_photos, training_server


@pytest.fixture(scope="module")
def server(engine):  # engine: the demo model is built before the server starts
    return training_server()[0]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = red_photos(tmp_path_factory.mktemp("photos") / "p")
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def _multipart(fields: dict[str, str], files: list[tuple[str, bytes]]) -> tuple[bytes, str]:
    """A multipart body written byte for byte (httpx would percent-encode a NUL in a filename)."""
    boundary = "flux-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode() + v.encode() + b"\r\n"
             for k, v in fields.items()]
    parts += [f'--{boundary}\r\nContent-Disposition: form-data; name="photos"; filename="'.encode()
              + name.encode() + b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + data + b"\r\n"
              for name, data in files]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _post(server, fields, files):
    body, ctype = _multipart(fields, files)
    with server.client() as c:
        return c.post("/api/trainings", content=body, headers={"Content-Type": ctype})


def _refused(r, status: int, param: str) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["param"] == param, err
    return err


OK = {"name": "anna", "trigger": "ohwx"}


@pytest.mark.parametrize("fields, param", [
    ({**OK, "resolution": "abc"}, "resolution"), ({**OK, "resolution": "64,"}, "resolution"),
    ({**OK, "strength": "nan"}, "strength"), ({**OK, "strength": "5"}, "strength"),
    ({**OK, "trigger": "ohwx\0"}, "trigger"), ({**OK, "task": "a/b"}, "task"), ({**OK, "task": "--overwrite-task"}, "task"),
    ({**OK, "name": "anna\n"}, "name"), ({**OK, "steps": "abc"}, "steps"), ({**OK, "step": "5"}, "step"),
    ({"name": "anna"}, "trigger"),
])
def test_bad_fields_get_422_naming_the_field(server, photos, fields, param):
    err = _refused(_post(server, fields, photos), 422, param)
    assert err["type"] == "invalid_training_config"


@pytest.mark.parametrize("filename", ["x\0.png", "x" * 300 + ".png"])
def test_bad_filenames_get_422_not_500(server, photos, filename):
    err = _refused(_post(server, OK, photos + [(filename, photos[0][1])]), 422, "photos")
    assert err["type"] == "invalid_dataset"


def test_a_decompression_bomb_is_refused_from_its_header(server, photos):
    err = _refused(_post(server, OK, photos + [("bomb.png", png_bomb(13000, 13000))]), 422, "photos")
    assert "bomb.png" in err["message"] and "13000x13000" in err["message"]


def test_1001_files_get_413_naming_the_limit(server):
    """Item 18: the multipart parser's own limit answered 400, a status the docs did not list."""
    err = _refused(_post(server, OK, [(f"c{i}.txt", b"x") for i in range(1001)]), 413, "photos")
    assert "1000" in err["message"] and "FLUX_TRAINING_MAX_FILES" in err["message"]


def test_wrong_shapes_of_body_are_422(server, photos):
    with server.client() as c:
        r = c.post("/api/trainings", json={"name": "anna", "trigger": "ohwx"})
        _refused(r, 422, "photos")
        r = c.post("/api/trainings", files=[("name", ("n.txt", b"anna"))] + [("photos", p) for p in photos],
                   data={"trigger": "ohwx"})
        _refused(r, 422, "name")
        r = c.post("/api/trainings", data={**OK, "name": ["a", "b"]}, files=[("photos", p) for p in photos])
        _refused(r, 422, "name")


def test_a_registered_lora_name_is_409_naming_its_tasks(server, photos):
    err = _refused(_post(server, {"name": "host_person", "trigger": "ohwx"}, photos), 409, "name")
    assert "host_face" in err["message"] and "character_face" in err["message"] and "/" not in \
        err["message"].replace("lora/host_person", "")


def test_the_api_key_is_checked_before_the_body_is_read(engine):
    """Item 14: with FLUX_API_KEY set, an unauthenticated 246 MB upload was read whole before the 401."""
    from app.http.factory import create_app
    from tests.conftest import make_settings

    app = create_app(make_settings(api_key="secret"), engine=engine)
    chunks_read, sent = 0, []

    async def receive():
        nonlocal chunks_read
        chunks_read += 1
        return {"type": "http.request", "body": b"x" * 1_000_000, "more_body": chunks_read < 246}

    async def send(message):
        sent.append(message)

    for headers in ([], [(b"authorization", b"Bearer wrong")]):
        chunks_read, sent = 0, []
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
                 "path": "/api/trainings", "raw_path": b"/api/trainings", "root_path": "", "query_string": b"",
                 "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"multipart/form-data; boundary=x"),
                             (b"content-length", b"246000000"), *headers],
                 "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
        asyncio.run(app(scope, receive, send))
        assert sent[0]["status"] == 401 and chunks_read == 0
        assert json.loads(sent[1]["body"])["error"]["type"] == "unauthorized"
        assert (b"www-authenticate", b"Bearer") in sent[0]["headers"]
