"""The page at 1440x900 (a laptop screen) as a user works with it: watch an image being made, reproduce one.

Covered: progress bar and live preview in the first screen while the image is made (no scrolling),
"Reuse settings" from a result and from a Recent item, opening and dropping a PNG made by the service
("PNG Info") to restore its settings, and an error followed by a successful attempt (the error shown in
Chinese and English with <code>, focus on the field, then cleared). Real server process on the demo model
(with the test hooks, to slow the steps down), real Chromium; screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import base64

import httpx
import pytest

from tests.test_browser import (
    UI_TIMEOUT_MS,
    ServerProcess,
    Visit,
    browser,  # noqa: F401 - the shared Chromium fixture
    detail,
    wait_image,
)

VIEW = {"width": 1440, "height": 900}
TYPED = "科普主持人，微笑"
# A task with trigger words and a template: the prompt sent to the model is not the prompt typed.
TASKS = """
[tasks.host_face]
description = "The science-video host (host_person LoRA)"
lora = "lora/host_person"
lora_alpha = 0.7
width = 1024
height = 1024

[tasks.styled_host]
description = "The host, with trigger words and a template"
lora = "lora/host_person"
lora_alpha = 0.7
trigger_words = ["hostperson", "sks"]
prompt_template = "studio photo of {prompt}, soft light"
width = 64
height = 64
num_inference_steps = 2
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tasks = tmp_path_factory.mktemp("tasks") / "tasks.toml"
    tasks.write_text(TASKS, encoding="utf-8")
    proc = ServerProcess("workflow", hooks=True, FLUX_TASKS_FILE=str(tasks))
    try:
        yield proc.wait_ready()
    finally:
        proc.stop()


@pytest.fixture
def visit(browser, server):  # noqa: F811 - the imported fixture, by name
    v = Visit(browser, server)
    v.page.set_viewport_size(VIEW)
    v.page.wait_for_selector("#task option[value=styled_host]", state="attached")
    yield v
    v.close()


@pytest.fixture
def slow_steps(server):
    httpx.post(server + "/_test/step-delay", json={"seconds": 0.15}, timeout=10).raise_for_status()
    yield
    httpx.post(server + "/_test/step-delay", json={"seconds": 0}, timeout=10).raise_for_status()


def set_form(page, *, task: str, size: tuple[int, int], steps: int, prompt: str = TYPED,
             strength: str | None = None, seed: str | None = None) -> None:
    page.select_option("#task", task)
    page.fill("#prompt", prompt)
    if strength is not None:
        page.eval_on_selector("#strength", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', "
                                           "{bubbles: true})); }", strength)
    page.fill("#width", str(size[0]))
    page.fill("#height", str(size[1]))
    if not page.eval_on_selector("details.advanced", "d => d.open"):
        page.click("details.advanced summary")
    page.fill("#steps", str(steps))
    if seed is not None:
        page.uncheck("#seed-random")
        page.fill("#seed", seed)
    else:
        page.check("#seed-random")


def in_first_screen(page, selector: str) -> dict:
    """The element's box relative to the top of the page (not the scrolled view): inside 1440x900?"""
    return page.eval_on_selector(selector, """el => { const r = el.getBoundingClientRect();
        const top = r.top + window.scrollY, left = r.left + window.scrollX;
        const visible = r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== 'hidden';
        return {visible, inside: visible && top >= 0 && left >= 0 && top + r.height <= innerHeight
                && left + r.width <= innerWidth, top, bottom: top + r.height, scrollY: window.scrollY}; }""")


def form_values(page) -> dict:
    return page.evaluate("""() => ({
        prompt: document.getElementById('prompt').value, task: document.getElementById('task').value,
        strength: document.getElementById('strength').value, width: document.getElementById('width').value,
        height: document.getElementById('height').value, steps: document.getElementById('steps').value,
        seed: document.getElementById('seed').value, random: document.getElementById('seed-random').checked})""")


# ------------------------------------------------------------------------------------------ tests
def test_progress_and_live_preview_are_in_the_first_screen_while_the_image_is_made(visit, slow_steps):
    from playwright.sync_api import expect

    page = visit.page
    set_form(page, task="host_face", size=(512, 256), steps=20)
    page.evaluate("""() => { window.__previewSteps = new Set();
        new MutationObserver(() => { const s = document.getElementById('preview').dataset.step;
          if (s) window.__previewSteps.add(Number(s)); })
        .observe(document.getElementById('preview'), {attributes: true}); }""")
    page.click("#generate")
    page.wait_for_function("Number(document.getElementById('preview').dataset.step) >= 6", timeout=UI_TIMEOUT_MS)
    for sel in ("#progress", "#progress-text", "#preview", "#preview-caption", "#cancel"):
        box = in_first_screen(page, sel)
        assert box["inside"], f"{sel} is not in the first 1440x900 screen while generating: {box}"
    assert page.evaluate("window.scrollY") == 0
    value, maximum = page.eval_on_selector("#progress", "b => [b.value, b.max]")
    assert 0 < value < maximum == 20
    assert page.eval_on_selector("#preview", "i => [i.naturalWidth, i.naturalHeight]") == [64, 32]  # 1/8 size
    expect(page.locator("#preview-caption")).to_contain_text("/20")
    visit.shot("workflow-live-preview-1440x900")

    assert wait_image(page, "#result-image") == 512
    expect(page.locator("#live")).to_be_hidden()  # the image replaces the preview
    steps = page.evaluate("[...window.__previewSteps]")
    assert len(steps) >= 3 and all(s % 2 == 0 for s in steps), steps  # every 2nd of 20 steps
    for sel in ("#result-image", "#download", "#reuse"):
        assert in_first_screen(page, sel)["inside"], f"{sel} is below the fold after the image arrived"
    visit.shot("workflow-done-1440x900")
    assert visit.errors == []


def test_reuse_settings_from_the_result_and_from_recent(visit):
    from playwright.sync_api import expect

    page = visit.page
    set_form(page, task="host_face", size=(64, 48), steps=3, strength="0.85")
    page.click("#generate")
    assert wait_image(page, "#result-image") == 64
    seed = detail(page, "#details", "seed")
    assert seed.isdigit()

    # change everything, then reuse: the form is back to what made the picture, with its seed fixed
    set_form(page, task="", size=(128, 128), steps=7, prompt="something else")
    page.click("#reuse")
    expected = {"prompt": TYPED, "task": "host_face", "strength": "0.85", "width": "64", "height": "48",
                "steps": "3", "seed": seed, "random": False}
    assert form_values(page) == expected
    expect(page.locator("#form-note")).to_contain_text("Settings restored")

    # the same from the Recent strip (which survives a reload)
    page.reload()
    page.wait_for_selector("#task option[value=styled_host]", state="attached")
    set_form(page, task="", size=(128, 128), steps=7, prompt="something else")
    page.locator("#recent li").first.get_by_role("button", name="Reuse settings").click()
    assert form_values(page) == expected

    # generating again reproduces the picture: same seed, same settings, same pixels
    first = page.locator("#recent li button.recent-item img").first.get_attribute("src")
    page.click("#generate")
    expect(page.locator("#recent li")).to_have_count(2)
    assert detail(page, "#details", "seed") == seed
    assert page.locator("#recent li button.recent-item img").first.get_attribute("src") == first
    assert visit.errors == []


def _service_png(server: str, **fields) -> bytes:
    r = httpx.post(server + "/api/generate-image", data=fields, timeout=60)
    assert r.status_code == 200, r.text
    return r.content


def test_a_png_made_by_the_service_restores_its_settings_when_opened_or_dropped(visit, server, tmp_path):
    from playwright.sync_api import expect

    page = visit.page
    png = _service_png(server, prompt=TYPED, use_model_manager="true", task="styled_host", lora_alpha="0.6",
                       width="48", height="32", num_inference_steps="3", guidance_scale="4.5", seed="4242",
                       translate="off")
    path = tmp_path / "styled_host_seed4242.png"
    path.write_bytes(png)
    expected = {"prompt": TYPED, "task": "styled_host", "strength": "0.6", "width": "48", "height": "32",
                "steps": "3", "seed": "4242", "random": False}

    page.set_input_files("#png-file", str(path))
    expect(page.locator("#form-note")).to_contain_text("styled_host_seed4242.png")
    assert form_values(page) == expected, "the typed prompt comes back without the trigger words and template"
    assert page.input_value("#guidance") == "4.5"
    assert page.input_value("#translate") == "off"
    assert wait_image(page, "#result-image") == 48
    assert detail(page, "#details", "seed") == "4242"
    assert detail(page, "#details", "prompt").startswith("hostperson, sks, studio photo of")
    visit.shot("workflow-png-info")

    # dropped on the page: the same
    set_form(page, task="", size=(128, 128), steps=7, prompt="something else")
    page.evaluate("""async (b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        for (const type of ['dragenter', 'dragover', 'drop'])
          document.getElementById('output').dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", base64.b64encode(png).decode())
    expect(page.locator("#form-note")).to_contain_text("dropped.png")
    assert form_values(page) == expected
    expect(page.locator("#drop-hint")).to_be_hidden()

    # a PNG without the service's chunk: said in both languages, the form untouched
    other = tmp_path / "other.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(other)
    page.set_input_files("#png-file", str(other))
    expect(page.locator("#global-error")).to_contain_text("不含本服务的参数")
    expect(page.locator("#global-error")).to_contain_text("carries no settings")
    assert form_values(page) == expected
    assert visit.errors == []


def test_an_error_then_a_successful_attempt(visit):
    from playwright.sync_api import expect

    page = visit.page
    set_form(page, task="host_face", size=(100, 64), steps=2)  # 100 is not a multiple of 16: 422 on `width`
    page.click("#generate")
    err = page.locator("#width-error")
    expect(err).to_contain_text("宽度必须是 16 的倍数")  # Chinese, made from the error's param and numbers
    expect(err).to_contain_text("must be a multiple of 16, got 100")  # the server's own words
    assert "`" not in err.inner_text(), "no raw backticks: `width` is shown as <code>width</code>"
    assert page.eval_on_selector("#width-error code", "c => c.textContent") == "width"
    assert page.evaluate("document.activeElement.id") == "width", "the focus goes to the field in error"
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    assert "`" not in page.inner_text("#progress-text")
    visit.shot("workflow-error-1440x900")

    # an error in the Advanced section opens it and focuses the field
    page.click("details.advanced summary")  # closed now
    page.fill("#width", "64")
    page.eval_on_selector("#steps", "el => { el.value = '100000'; }")
    page.click("#generate")
    expect(page.locator("#steps-error")).to_contain_text("步数")
    assert page.evaluate("document.activeElement.id") == "steps"
    assert page.inner_text("#width-error") == "", "the earlier error is gone"

    page.fill("#steps", "2")
    page.click("#generate")
    assert wait_image(page, "#result-image") == 64
    for sel in ("#width-error", "#steps-error", "#form-error"):
        assert page.inner_text(sel) == "", f"{sel} still shows an old error"
    assert page.locator("[aria-invalid]").count() == 0
    expect(page.locator("#global-error")).to_be_hidden()
    expect(page.locator("#progress-text")).to_contain_text("Done")
    assert visit.errors == []
