"""POST /api/generate-image against a real uvicorn server: what users run, and what they get back."""

from __future__ import annotations

import json
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor

from tests.http_support import SMALL, pixels, png_info

PROMPT = "科普主持人，专业形象，微笑"


def test_users_curl_verbatim_returns_1024_png_with_chinese_prompt_intact(server, tmp_path):
    # the command from the issue, only the port differs
    cmd = ["curl", "-X", "POST", f"{server.url}/api/generate-image",
           "-F", f"prompt={PROMPT}", "-F", "use_model_manager=true", "-F", "task=host_face",
           "-F", "width=1024", "-F", "height=1024", "-o", "host.png", "-sS", "-D", "headers.txt"]
    done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    headers = (tmp_path / "headers.txt").read_text()
    assert " 200 " in headers.splitlines()[0]
    size, info = png_info((tmp_path / "host.png").read_bytes())
    assert size == (1024, 1024)
    assert info["prompt_original"] == PROMPT  # as typed, intact
    assert info["prompt"] == "science show host, professional look, smiling"  # what the encoders got (glossary)
    assert info["task"] == "host_face" and info["adapter_name"] == "host_person"
    # provenance in the PNG text chunk agrees with the headers
    assert info["adapter_file"] == "demo:lora/host_person/pytorch_lora_weights.safetensors"
    assert f"x-adapter-hash: {info['adapter_hash']}" in headers.lower()


def test_response_headers_say_task_adapter_strength_seed_and_demo(client):
    r = client.post("/api/generate-image", data={"prompt": "a host", "use_model_manager": "true",
                                                 "task": "host_face", "seed": "42", **SMALL})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    h = r.headers
    assert (h["x-task"], h["x-adapter"], h["x-lora-scale"], h["x-seed"]) == ("host_face", "host_person", "0.7", "42")
    assert h["x-adapter-file"] == "demo:lora/host_person/pytorch_lora_weights.safetensors"  # never an absolute path
    assert re.fullmatch(r"[0-9a-f]{12}", h["x-adapter-hash"])
    assert any("demo's own LoRA" in w for w in json.loads(h["x-adapter-warnings"]))  # stand-in said in headers
    assert (h["x-width"], h["x-height"], h["x-steps"], h["x-guidance-scale"]) == ("64", "64", "2", "3.5")
    assert h["x-demo-model"] == "true"
    assert float(h["x-generation-time"]) > 0 and float(h["x-queue-wait"]) >= 0
    assert any("demo model" in w for w in json.loads(h["x-prompt-warnings"]))


def test_prompt_warnings_header_is_ascii_json_that_decodes_to_the_chinese_text(client):
    r = client.post("/api/generate-image", data={"prompt": PROMPT, "translate": "off", **SMALL})
    assert r.status_code == 200
    raw = r.headers["x-prompt-warnings"]
    assert raw.isascii()
    assert any("科普主持人" in w for w in json.loads(raw))


def test_png_has_the_asked_size(client):
    r = client.post("/api/generate-image", data={"prompt": "wide", "width": "96", "height": "48",
                                                 "num_inference_steps": "1"})
    assert r.status_code == 200
    assert png_info(r.content)[0] == (96, 48)


def test_base_model_request_says_none_for_task_and_adapter(client):
    r = client.post("/api/generate-image", data={"prompt": "a lab", **SMALL})
    assert r.status_code == 200
    assert (r.headers["x-task"], r.headers["x-adapter"], r.headers["x-lora-scale"]) == ("none", "none", "0")


def test_json_body_works_like_the_form(client):
    form = client.post("/api/generate-image", data={"prompt": "same", "seed": "5", "use_model_manager": "true",
                                                    "task": "host_face", "lora_alpha": "0.8", **SMALL})
    body = client.post("/api/generate-image", json={"prompt": "same", "seed": 5, "use_model_manager": True,
                                                    "task": "host_face", "lora_alpha": 0.8, "width": 64,
                                                    "height": 64, "num_inference_steps": 2})
    assert form.status_code == body.status_code == 200
    assert body.headers["x-lora-scale"] == "0.8"
    assert pixels(form.content) == pixels(body.content)


def test_urlencoded_form_works(client):
    r = client.post("/api/generate-image", content="prompt=a%20lab&width=64&height=64&num_inference_steps=1",
                    headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.headers["x-steps"] == "1"


def test_lora_alpha_overrides_the_task_default_for_one_request(client):
    r = client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": "true", "task": "host_face",
                                                 "lora_alpha": "0.3", **SMALL})
    assert r.headers["x-lora-scale"] == "0.3"
    r = client.post("/api/generate-image", data={"prompt": "p", "use_model_manager": "true", "task": "host_face",
                                                 **SMALL})
    assert r.headers["x-lora-scale"] == "0.7"


def test_lora_alpha_zero_equals_the_no_lora_image(client):
    with_zero = client.post("/api/generate-image", data={"prompt": "host", "seed": "11", "use_model_manager": "true",
                                                         "task": "host_face", "lora_alpha": "0", **SMALL})
    base = client.post("/api/generate-image", data={"prompt": "host", "seed": "11", **SMALL})
    lora = client.post("/api/generate-image", data={"prompt": "host", "seed": "11", "use_model_manager": "true",
                                                    "task": "host_face", **SMALL})
    assert with_zero.status_code == base.status_code == lora.status_code == 200
    assert pixels(with_zero.content) == pixels(base.content)
    assert pixels(lora.content) != pixels(base.content)


def test_same_seed_gives_the_same_image(client):
    a = client.post("/api/generate-image", data={"prompt": "x", "seed": "3", **SMALL})
    b = client.post("/api/generate-image", data={"prompt": "x", "seed": "3", **SMALL})
    assert pixels(a.content) == pixels(b.content)


def test_concurrent_mixed_task_requests_equal_their_sequential_references(server):
    variants = [
        {"prompt": "host", "use_model_manager": "true", "task": "host_face"},
        {"prompt": "lab", "use_model_manager": "true", "task": "science_background"},
        {"prompt": "host", "use_model_manager": "true", "task": "character_face", "lora_alpha": "1.5"},
        {"prompt": "plain"},
        {"prompt": "host", "use_model_manager": "true", "task": "host_face", "lora_alpha": "0.2"},
    ]
    bodies = [{**v, "seed": str(100 + i), **SMALL} for i, v in enumerate(variants)]
    with server.client() as c:
        reference = [pixels(c.post("/api/generate-image", data=b).content) for b in bodies]

    def one(body):
        with server.client() as c:
            r = c.post("/api/generate-image", data=body)
            assert r.status_code == 200, r.text
            return pixels(r.content)

    with ThreadPoolExecutor(len(bodies)) as pool:  # the test server holds 1 running + 3 queued: waves that fit
        first = list(pool.map(one, bodies[:3]))
        second = list(pool.map(one, bodies[3:]))
    assert first + second == reference
