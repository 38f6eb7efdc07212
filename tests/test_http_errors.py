"""Every refusal is one JSON envelope {"error": {"type", "message", "param"}} with the fitting status code."""

from __future__ import annotations

import pytest

from tests.http_support import SMALL


def error_of(r, status: int, param: str | None = "ANY") -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err = r.json()["error"]
    assert set(err) == {"type", "message", "param"}
    assert "Traceback" not in err["message"]
    if param != "ANY":
        assert err["param"] == param
    return err


def test_task_without_use_model_manager_is_422_saying_to_send_it(client):
    err = error_of(client.post("/api/generate-image", data={"prompt": "p", "task": "host_face"}), 422, "task")
    assert "use_model_manager=true" in err["message"]


def test_lora_alpha_without_a_lora_is_422(client):
    err = error_of(client.post("/api/generate-image", data={"prompt": "p", "lora_alpha": "0.5"}), 422, "lora_alpha")
    assert "use_model_manager=true" in err["message"] and "host_face" in err["message"]


def test_lora_alpha_on_a_task_without_lora_is_422(client):
    r = client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": "true",
                                                 "task": "science_background", "lora_alpha": "0.5"})
    assert "science_background" in error_of(r, 422, "lora_alpha")["message"]


def test_use_model_manager_without_task_is_422_listing_tasks(client):
    err = error_of(client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": "true"}), 422, "task")
    assert "host_face" in err["message"] and "science_background" in err["message"]


def test_unknown_task_is_422_listing_valid_tasks(client):
    r = client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": "true", "task": "cat"})
    err = error_of(r, 422, "task")
    assert err["type"] == "unknown_task" and "host_face" in err["message"]


@pytest.mark.parametrize("field,value", [("width", "65"), ("height", "8"), ("width", "4096"),
                                         ("num_inference_steps", "0"), ("num_inference_steps", "101"),
                                         ("guidance_scale", "25"), ("seed", "-1"), ("width", "abc"),
                                         ("guidance_scale", "nan")])
def test_out_of_bounds_parameter_is_422_naming_it(client, field, value):
    body = {"prompt": "p", **SMALL, field: value}
    err = error_of(client.post("/api/generate-image", data=body), 422, field)
    assert f"`{field}`" in err["message"]


def test_lora_alpha_out_of_range_is_422(client):
    r = client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": "true", "task": "host_face",
                                                 "lora_alpha": "2.5", **SMALL})
    error_of(r, 422, "lora_alpha")


def test_missing_prompt_is_422(client):
    error_of(client.post("/api/generate-image", data={"width": "64"}), 422, "prompt")


def test_blank_prompt_is_422(client):
    error_of(client.post("/api/generate-image", json={"prompt": "   "}), 422, "prompt")


def test_too_long_prompt_is_422(client):
    error_of(client.post("/api/generate-image", json={"prompt": "x" * 2001}), 422, "prompt")


def test_client_file_path_is_refused(client):
    err = error_of(client.post("/api/generate-image", data={"prompt": "p", "lora_path": "/etc/passwd"}), 422,
                   "lora_path")
    assert "path" in err["message"]


def test_file_upload_is_refused(client):
    r = client.post("/api/generate-image", data={"prompt": "p"}, files={"lora": ("x.safetensors", b"123")})
    assert r.status_code in (400, 422) and r.json()["error"]["type"] == "invalid_request"


def test_malformed_json_is_422(client):
    r = client.post("/api/generate-image", content=b"{not json", headers={"content-type": "application/json"})
    error_of(r, 422)


def test_json_that_is_not_an_object_is_422(client):
    error_of(client.post("/api/generate-image", json=["prompt"]), 422)


def test_unsupported_content_type_is_422(client):
    r = client.post("/api/generate-image", content=b"prompt", headers={"content-type": "text/plain"})
    assert "multipart/form-data" in error_of(r, 422)["message"]


def test_body_over_the_limit_is_413(client):
    r = client.post("/api/generate-image", data={"prompt": "x" * 70_000})
    assert error_of(r, 413)["type"] == "payload_too_large"


def test_chunked_body_over_the_limit_is_413(client):
    def chunks():
        for _ in range(20):
            yield b'{"prompt": "' + b"x" * 8000 if _ == 0 else b"x" * 8000

    r = client.post("/api/generate-image", content=chunks(), headers={"content-type": "application/json"})
    assert error_of(r, 413)["type"] == "payload_too_large"


def test_unknown_route_is_404_envelope(client):
    assert error_of(client.get("/api/nope"), 404)["type"] == "not_found"


def test_wrong_method_is_405_envelope(client):
    assert error_of(client.get("/api/generate-image"), 405)["type"] == "method_not_allowed"


def test_jobs_validate_like_generate_image(client):
    err = error_of(client.post("/api/jobs", data={"prompt": "p", "task": "host_face"}), 422, "task")
    assert "use_model_manager=true" in err["message"]
