"""The page's Train tab in headless Chromium against a real server on the demo model: choose photos, name,
trigger word, task and steps, start, watch the loss curve and the samples fill in, then "use it" selects
the new task in the generator. Needs Debian's Chromium at /usr/bin/chromium (see tests/test_browser.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.http_support import ROOT
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.training_support import red_photos, training_server


@pytest.fixture(scope="module")
def server(engine):  # engine: the demo model is built before the server starts
    return training_server()[0]  # shared with test_training_http.py


def test_train_tab_trains_shows_progress_and_use_it_selects_the_task(server, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    photos = sorted(red_photos(tmp_path / "photos").iterdir())
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.click("#tab-train")
        assert page.is_visible("#train-panel") and not page.is_visible("#gen-form")
        page.click("#train-start")  # nothing chosen yet: told so, nothing sent
        assert "photos" in page.text_content("#train-error").lower()
        page.set_input_files("#train-photos", [str(p) for p in photos])
        assert "4" in page.text_content("#train-files")
        page.fill("#train-name", "pagered")
        page.fill("#train-trigger", "ohwx")
        page.fill("#train-task", "pagered_face")
        page.fill("#train-steps", "8")
        page.click("#train-start")
        page.wait_for_function("document.querySelector('#train-status').textContent.includes('Done')", timeout=240_000)
        assert int(page.get_attribute("#train-loss", "data-points")) == 8
        steps = page.eval_on_selector_all("#train-samples figure", "fs => fs.map(f => f.dataset.step)")
        assert steps == ["0", "8"]
        assert page.eval_on_selector_all("#train-samples img", "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
        (ROOT / "test-artifacts").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "test-artifacts" / "train-tab.png"), full_page=True)
        page.click("#train-use")
        assert page.is_visible("#gen-form") and not page.is_visible("#train-panel")
        page.wait_for_function("document.querySelector('#task').value === 'pagered_face'")
        browser.close()
    assert not errors, errors
