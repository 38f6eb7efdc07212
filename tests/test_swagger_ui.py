"""``/docs`` "Try it out" works as a user uses it (issue 9, item 1), in headless Chromium against a real server.

A user opens an operation, presses Try it out, fills in only ``prompt`` (then the README's six fields),
presses Execute, and must see 200 and the image, with its headers; for ``/api/jobs`` the same body gives 202
and the job's image comes from ``GET /api/jobs/{job_id}/image``. Swagger UI's assets come from this server
(no CDN): the test also fails on any request to another host. Needs Debian's Chromium (``make browser``).
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
PROMPT = "科普主持人，专业形象，微笑"
README_FIELDS = {"prompt": PROMPT, "use_model_manager": True, "task": "host_face", "width": 1024, "height": 1024,
                 "lora_alpha": 0.8}
TIMEOUT_MS = 120_000  # a prompt-only request is 1024x1024 with the model's 28 steps on the CPU demo model
LIVE = ".live-responses-table tr.response"  # the answer to the last Execute


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture()
def docs(browser, server):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    context.set_default_timeout(30_000)
    page = context.new_page()
    requests, errors = [], []
    context.on("request", lambda r: requests.append(r.url))
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/docs")
    page.wait_for_selector(".opblock")
    yield page
    own = urlparse(server.url).netloc
    foreign = [u for u in requests if urlparse(u).scheme in ("http", "https") and urlparse(u).netloc != own]
    context.close()
    assert not foreign, f"/docs reached another host: {foreign}"
    assert not errors, errors


def open_operation(page, operation_id: str):
    block = page.locator(f"[id$='-{operation_id}']").first
    block.locator(".opblock-summary").first.click()
    block.locator("button.try-out__btn").click()
    return block


def execute(block) -> str:
    """Press Execute (after Clear, if an earlier answer is shown); return the status of the live answer."""
    clear = block.locator("button.btn-clear")
    if clear.count():
        clear.click()
    block.locator("button.execute").click()
    status = block.locator(f"{LIVE} .response-col_status").first
    status.wait_for(timeout=TIMEOUT_MS)
    return status.inner_text().strip()


def execute_json(block, body: dict) -> str:
    """Fill the JSON body, press Execute, return the status shown in the live response."""
    area = block.locator("textarea.body-param__text")
    assert "null" not in area.input_value()  # the pre-filled example is a working request, no null anywhere
    area.fill(json.dumps(body, ensure_ascii=False))
    return execute(block)


def shown_image_width(page, block) -> int:
    img = block.locator(f"{LIVE} .response-col_description img").first
    img.wait_for(timeout=TIMEOUT_MS)
    page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=img.element_handle(), timeout=TIMEOUT_MS)
    return img.evaluate("i => i.naturalWidth")


def shown_headers(block) -> str:
    return block.locator(f"{LIVE} .response-col_description").first.inner_text().lower()


def test_generate_image_try_it_out_with_only_prompt_shows_the_image(docs):
    block = open_operation(docs, "generate_image")
    assert execute_json(block, {"prompt": PROMPT}) == "200"
    assert shown_image_width(docs, block) == 1024
    assert "x-seed" in shown_headers(block) and "x-demo-model" in shown_headers(block)


def test_generate_image_try_it_out_with_the_readme_fields_shows_the_lora_image(docs):
    block = open_operation(docs, "generate_image")
    assert execute_json(block, README_FIELDS) == "200"
    assert shown_image_width(docs, block) == 1024
    headers = " ".join(shown_headers(block).split())
    assert "x-adapter: host_person" in headers and "x-lora-scale: 0.8" in headers and "x-task: host_face" in headers


def test_jobs_try_it_out_with_only_prompt_then_the_image_route_shows_it(docs):
    block = open_operation(docs, "create_job")
    assert execute_json(block, {"prompt": PROMPT}) == "202"
    job = json.loads(block.locator(f"{LIVE} .response-col_description pre").first.inner_text())
    assert job["status"] in ("queued", "running") and job["image_url"] is None
    image = open_operation(docs, "get_job_image")
    image.locator("input[placeholder='job_id']").fill(job["id"])
    for _ in range(240):  # the user presses Execute again until the job is done (409 until then)
        status = execute(image)
        if status == "200":
            break
        assert status == "409"
        docs.wait_for_timeout(500)
    assert shown_image_width(docs, image) == 1024


def test_jobs_try_it_out_with_the_readme_fields_is_accepted(docs):
    block = open_operation(docs, "create_job")
    assert execute_json(block, README_FIELDS) == "202"
    job = json.loads(block.locator(f"{LIVE} .response-col_description pre").first.inner_text())
    assert (job["task"], job["adapter"], job["lora_scale"], job["width"]) == ("host_face", "host_person", 0.8, 1024)
