"""The web page at ``/``, driven in headless Chromium against a real server process on the demo model.

What a user does (at 1280x900): type a Chinese prompt, pick ``host_face``, set the strength, generate, watch
the progress bar, read what was used, compare with and without the LoRA on one seed, reopen a recent result, cancel a
long job, and (on a server with an API key) enter the key. Also checked: the demo-model banner, that the
page asks no host but its own server (it must work offline), and that it fits a phone screen. The live
preview, "Reuse settings", PNG info and errors at 1440x900 are in tests/test_browser_workflow.py.

Needs Debian's Chromium at /usr/bin/chromium (``make browser`` installs it); without it these tests FAIL.
Screenshots and server logs go to ``test-artifacts/`` (git-ignored; CI keeps it as an artifact).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from tests.conftest import CPU_ENV

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
PROMPT = "科普主持人，专业形象，微笑，正式着装，演播室背景"
UI_TIMEOUT_MS = 30_000


# ------------------------------------------------------------------------------------------ fixtures
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``uvicorn app.main:create_app --factory`` in its own process, on the demo model (``hooks``: with the
    test routes of tests/hooks.py)."""

    def __init__(self, name: str, hooks: bool = False, **env_overrides: str):
        ARTIFACTS.mkdir(exist_ok=True)
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}  # hermetic: no stray config
        env.update(CPU_ENV)
        env.update(FLUX_MIN_SIZE="16", FLUX_ALLOW_DEMO="true", PYTHONUNBUFFERED="1",
                   FLUX_DATA_DIR=tempfile.mkdtemp(prefix="flux-browser-data-"), **env_overrides)  # own job store
        self.log_path = ARTIFACTS / f"server-{name}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "tests.hooks:create_app" if hooks else "app.main:create_app", "--factory",
                 "--host", "127.0.0.1", "--port", str(port)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        self.base = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"server exited with {self.proc.returncode} before /ready:\n"
                            f"{self.log_path.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(self.base + "/ready", timeout=2).status_code == 200:
                    return self.base
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {timeout_s} s:\n{self.log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def servers():
    """Both servers start together (start-up is most of this module's time): plain, and with an API key."""
    procs = {"demo": ServerProcess("demo"), "api-key": ServerProcess("api-key", FLUX_API_KEY="secret")}
    try:
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture(scope="module")
def server(servers):
    return servers["demo"].wait_ready()


@pytest.fixture(scope="module")
def keyed_server(servers):
    return servers["api-key"].wait_ready()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser tests need Debian's Chromium. Run `make browser` "
                    "(or `apt-get install chromium`). Never `playwright install`: it downloads from the internet.")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Visit:
    """One browser context on one server: records every request and every page error."""

    def __init__(self, browser, base: str, **context_args):
        self.base = base
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_args)
        self.context.set_default_timeout(UI_TIMEOUT_MS)
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.context.on("request", lambda r: self.requests.append(r.url))
        self.page = self.context.new_page()
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.goto(base + "/")

    def foreign_requests(self) -> list[str]:
        own = urlparse(self.base).netloc
        return [u for u in self.requests if urlparse(u).scheme not in ("data", "blob") and urlparse(u).netloc != own]

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(browser, server):
    v = Visit(browser, server)
    yield v
    v.close()


# ------------------------------------------------------------------------------------------ helpers
def wait_image(page, selector: str) -> int:
    """Waits until the <img> has decoded pixels; returns its naturalWidth."""
    page.wait_for_function(
        "(sel) => { const i = document.querySelector(sel); return i && i.complete && i.naturalWidth > 0; }",
        arg=selector, timeout=UI_TIMEOUT_MS,
    )
    return page.eval_on_selector(selector, "i => i.naturalWidth")


def detail(page, dl: str, key: str) -> str:
    return page.inner_text(f"{dl} dd[data-key={key}]").strip()


def record_progress(page) -> None:
    """Keeps every value the progress bar takes (old values of each change, so none is lost to batching)."""
    page.evaluate("""() => {
      const bar = document.getElementById('progress');
      window.__progress = [];
      new MutationObserver((records) => {
        for (const r of records) window.__progress.push([r.attributeName, r.oldValue]);
        window.__progress.push(['now', bar.value + '/' + bar.max]);
      }).observe(bar, {attributes: true, attributeOldValue: true, attributeFilter: ['value', 'max']});
    }""")


def fill_form(page, *, task: str, size: int, steps: int, strength: str | None = None) -> None:
    page.fill("#prompt", PROMPT)
    page.select_option("#task", task)
    if strength is not None:
        page.eval_on_selector(
            "#strength", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", strength
        )
    page.fill("#width", str(size))
    page.fill("#height", str(size))
    if not page.eval_on_selector("details.advanced", "d => d.open"):
        page.click("details.advanced summary")
    page.fill("#steps", str(steps))


# ------------------------------------------------------------------------------------------ tests
def test_chromium_is_installed():
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} missing: run `make browser` (apt-get install chromium)"


def test_generate_with_progress_then_compare_then_recent(visit, server):
    from playwright.sync_api import expect

    page = visit.page
    expect(page.locator("#demo-banner")).to_be_visible()
    expect(page.locator("#task option[value=host_face]")).to_have_count(1)
    page.select_option("#task", "host_face")
    assert page.input_value("#strength") == "0.7"  # the task's default strength, from /api/tasks
    expect(page.locator("#strength-value")).to_have_text("0.70")

    fill_form(page, task="host_face", size=256, steps=20, strength="0.85")
    expect(page.locator("#strength-value")).to_have_text("0.85")
    record_progress(page)

    # A long job sent straight to the API holds the worker, so the page's job waits in the queue (its event
    # stream is open before its first step) and the page shows the queue position; cancelling it frees it.
    blocker = httpx.post(server + "/api/jobs", data={
        "prompt": "blocker", "use_model_manager": "false", "width": "768", "height": "768",
        "num_inference_steps": "100"}, timeout=10)
    assert blocker.status_code == 202, blocker.text
    page.click("#generate")
    expect(page.locator("#progress-text")).to_contain_text("Queued")
    assert httpx.delete(f"{server}/api/jobs/{blocker.json()['id']}", timeout=10).status_code in (200, 202, 204)

    assert wait_image(page, "#result-image") == 256
    expect(page.locator("#progress-text")).to_contain_text("Done")
    log = page.evaluate("window.__progress")
    values = [float(old) for name, old in log if name == "value" and old not in (None, "")]
    values += [float(now.split("/")[0]) for name, now in log if name == "now"]
    assert any(0 < v < 20 for v in values), f"no intermediate progress value seen: {log}"
    assert page.eval_on_selector("#progress", "b => [b.value, b.max]") == [20, 20]

    assert detail(page, "#details", "task") == "host_face"
    assert "host_person" in detail(page, "#details", "adapter")
    assert detail(page, "#details", "strength") == "0.85"
    assert detail(page, "#details", "size") == "256×256"
    assert detail(page, "#details", "steps") == "20"
    seed = detail(page, "#details", "seed")
    assert seed.isdigit()
    assert "demo" in detail(page, "#details", "warnings").lower()
    assert page.get_attribute("#download", "href").startswith("blob:")
    visit.shot("browser-generate")

    # Compare: two jobs, one seed picked by the page, with and without the LoRA, side by side.
    page.fill("#steps", "4")
    page.click("#compare")
    assert wait_image(page, "#compare-with") == 256
    assert wait_image(page, "#compare-without") == 256
    expect(page.locator("#comparison")).to_be_visible()
    with_seed = page.inner_text("#compare-with-seed").strip()
    assert with_seed.isdigit() and with_seed == page.inner_text("#compare-without-seed").strip()
    assert "host_person" in detail(page, "#compare-with-details", "adapter")
    assert detail(page, "#compare-with-details", "strength") == "0.85"
    assert detail(page, "#compare-without-details", "seed") == with_seed
    assert detail(page, "#compare-without-details", "strength") == "0"
    assert "host_person" not in detail(page, "#compare-without-details", "adapter")
    visit.shot("browser-compare")

    # Recent results: newest first; clicking the older one shows its image and details again.
    expect(page.locator("#recent li")).to_have_count(2)
    page.locator("#recent li button.recent-item").nth(1).click()
    expect(page.locator("#single")).to_be_visible()
    assert detail(page, "#details", "seed") == seed
    assert wait_image(page, "#result-image") == 256

    # The strip survives a reload (sessionStorage); the full images are fetched again from the server.
    page.reload()
    expect(page.locator("#recent li")).to_have_count(2)
    page.locator("#recent li button.recent-item").first.click()
    assert wait_image(page, "#compare-with") == 256
    assert page.inner_text("#compare-without-seed").strip() == with_seed

    # Phone width: one column, nothing wider than the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    visit.shot("browser-phone")

    assert visit.errors == []
    assert visit.foreign_requests() == [], "the page must not call any other host (offline GPU boxes)"


def test_cancel_button_stops_a_running_job(visit):
    from playwright.sync_api import expect

    page = visit.page
    expect(page.locator("#task option[value=host_face]")).to_have_count(1)
    fill_form(page, task="host_face", size=1024, steps=100)
    page.click("#generate")
    expect(page.locator("#progress-text")).to_contain_text("Generating")
    expect(page.locator("#cancel")).to_be_enabled()
    page.click("#cancel")
    expect(page.locator("#progress-text")).to_contain_text("Cancelled")
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#result-image")).not_to_be_visible()
    assert visit.errors == []


def test_base_model_choice_disables_strength_and_compare(visit):
    from playwright.sync_api import expect

    page = visit.page
    expect(page.locator("#task option[value=host_face]")).to_have_count(1)
    page.select_option("#task", "")
    expect(page.locator("#strength")).to_be_disabled()
    expect(page.locator("#compare")).to_be_disabled()
    page.select_option("#task", "science_background")  # a task without a LoRA
    expect(page.locator("#strength")).to_be_disabled()
    assert page.input_value("#width") == "1024" and page.input_value("#height") == "576"


def test_server_error_is_shown_next_to_its_field(visit):
    from playwright.sync_api import expect

    page = visit.page
    expect(page.locator("#task option[value=host_face]")).to_have_count(1)
    fill_form(page, task="host_face", size=64, steps=2)
    page.fill("#width", "100")  # not a multiple of 16: the server's 422 names `width`
    page.click("#generate")
    expect(page.locator("#width-error")).to_contain_text("16")
    expect(page.locator("#width")).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#generate")).to_be_enabled()


def test_chinese_prompt_shows_its_english_which_can_be_edited_and_sent(visit):
    from playwright.sync_api import expect

    page = visit.page
    expect(page.locator("#task option[value=host_face]")).to_have_count(1)
    fill_form(page, task="host_face", size=64, steps=2)
    assert page.input_value("#translate") == "auto"
    page.click("#generate")
    assert wait_image(page, "#result-image") == 64
    stage = "#prompt-stage"
    expect(page.locator(stage)).to_be_visible()
    assert detail(page, stage, "original") == PROMPT
    assert "科普主持人 → science show host" in detail(page, stage, "glossary")
    assert "科普主持人 → science show host [术语表 glossary]" in detail(page, stage, "words")  # word by word, with its stage
    assert detail(page, stage, "dictionary") == "未使用 not used"  # the glossary covered it all
    assert detail(page, stage, "unknown") == "100% → 0%"
    english = "science show host, professional look, smiling, formal attire, TV studio background"
    assert page.input_value("#prompt-english") == english == detail(page, stage, "t5")
    assert detail(page, "#details", "prompt") == english

    page.fill("#prompt-english", "a portrait photo of a smiling science host")
    expect(page.locator("#generate")).to_be_enabled()  # the first run has fully finished
    page.click("#send-english")
    expect(page.locator(f"{stage} dd[data-key=translate]")).to_have_text("off", timeout=UI_TIMEOUT_MS)
    assert detail(page, "#details", "prompt") == "a portrait photo of a smiling science host"
    assert page.input_value("#prompt") == "a portrait photo of a smiling science host"
    assert page.input_value("#translate") == "off"
    visit.shot("browser-prompt-stage")
    assert visit.errors == []


def test_a_new_chinese_prompt_shows_each_word_and_the_stage_that_translated_it(visit):
    """Words the glossary does not know are translated by the dictionary (issue 20); the page says which stage
    translated each word, and that no translation model (let alone a random one) was used."""
    from playwright.sync_api import expect

    page = visit.page
    expect(page.locator("#task option[value=host_face]")).to_have_count(1)
    fill_form(page, task="host_face", size=64, steps=2)
    page.fill("#prompt", "主持人站在火山口旁边")
    page.click("#generate")
    assert wait_image(page, "#result-image") == 64
    stage = "#prompt-stage"
    expect(page.locator(stage)).to_be_visible()
    words = detail(page, stage, "words")
    assert "主持人 → host [术语表 glossary]" in words and "火山口 → volcanic crater [词典 dictionary]" in words
    assert "在 → ∅ [词典 dictionary]" in words  # a dropped function word is shown too
    assert "CC-CEDICT" in detail(page, stage, "dictionary")
    assert detail(page, stage, "translator") == "未使用 not used"
    assert page.input_value("#prompt-english") == "host standing beside volcanic crater"
    assert visit.errors == []


def test_api_key_field_unlocks_a_protected_server(browser, keyed_server):
    from playwright.sync_api import expect

    v = Visit(browser, keyed_server)
    page = v.page
    try:
        expect(page.locator("#global-error")).to_be_visible()
        expect(page.locator("#api-key-error")).not_to_be_empty()
        expect(page.locator("#generate")).to_be_disabled()
        v.shot("browser-api-key-missing")

        page.fill("#api-key", "secret")
        page.click("#api-key-save")
        expect(page.locator("#task option[value=host_face]")).to_have_count(1)
        expect(page.locator("#global-error")).to_be_hidden()
        assert page.evaluate("localStorage.getItem('flux.apiKey')") == "secret"

        fill_form(page, task="host_face", size=64, steps=2)
        page.click("#generate")
        assert wait_image(page, "#result-image") == 64
        assert "host_person" in detail(page, "#details", "adapter")
        v.shot("browser-api-key")
        assert v.errors == []
        assert v.foreign_requests() == []
    finally:
        v.close()
