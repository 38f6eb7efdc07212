"""The page's Train tab in headless Chromium at 1440x900 against a real server on the demo model: choose
photos, name, trigger word and task, set rank and steps under "Advanced", start, watch the loss curve, the
samples and the log fill in, find the run in the past trainings with its result, then "use it" selects the new
task in the generator. Also: the tab is laid out like Generate (issue 17 item 24: its inputs spanned 1440 px, its
log was an empty box, there was no Advanced fold and no list of past trainings), a refused option is shown at
its field, and the placeholders are the trainer's defaults. Needs Debian's Chromium at /usr/bin/chromium (see
tests/test_browser.py); screenshots go to test-artifacts/.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.http_support import ROOT
from tests.test_browser import CHROMIUM, CHROMIUM_ARGS
from tests.training_support import red_photos, training_server

ARTIFACTS = ROOT / "test-artifacts"
ADVANCED = ["steps", "rank", "alpha", "lr", "resolution", "seed", "strength", "overwrite_task"]


@pytest.fixture(scope="module")
def server(engine):  # engine: the demo model is built before the server starts
    return training_server()[0]  # shared with test_training_http.py


def box(page, selector: str) -> dict:
    return page.eval_on_selector(selector, "e => { const r = e.getBoundingClientRect(); "
                                           "return {x: r.x, y: r.y, w: r.width, h: r.height}; }")


def test_train_tab_trains_shows_progress_and_use_it_selects_the_task(server, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium)")
    from playwright.sync_api import expect, sync_playwright

    from training.config import preset

    photos = sorted(red_photos(tmp_path / "photos").iterdir())
    errors: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(60_000)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(server.url + "/")
        page.wait_for_selector("#task option[value=host_face]", state="attached")
        page.click("#tab-train")
        assert page.is_visible("#train-panel") and not page.is_visible("#gen-form")

        # laid out like Generate: the form in a column beside the progress panel, the list below
        form, out, name = box(page, "#train-form"), box(page, "#train-output"), box(page, "#train-name")
        assert name["w"] < 480 and form["x"] + form["w"] < out["x"] and abs(form["y"] - out["y"]) < 60, (form, out)
        assert box(page, "#train-start")["y"] + box(page, "#train-start")["h"] <= 900  # Start in the first screen
        assert page.is_visible("#train-history")
        expect(page.locator("#train-log")).to_contain_text("No training yet")  # a log that says what to do
        assert not page.eval_on_selector("#train-advanced", "d => d.open")
        page.click("#train-advanced summary")
        for field in ADVANCED:
            assert page.is_visible(f"#train-{field}"), field
        demo = preset("x", "y", demo=True)  # the placeholders are the trainer's own defaults
        for field, value in (("steps", demo.steps), ("rank", demo.rank), ("alpha", demo.alpha), ("lr", demo.lr),
                             ("resolution", ",".join(map(str, demo.resolutions)))):
            shown = value if isinstance(value, str) else f"{value:g}"  # JS writes 4.0 as 4
            assert page.get_attribute(f"#train-{field}", "placeholder") == f"默认 default {shown}", field
        page.click("#train-advanced summary")
        page.screenshot(path=str(ARTIFACTS / "train-tab-1440x900.png"))

        page.click("#train-start")  # nothing chosen yet: told so at the drop zone, nothing sent
        expect(page.locator("#train-photos-error")).to_contain_text("photos")
        page.set_input_files("#train-photos", [str(p) for p in photos])
        expect(page.locator("#train-files")).to_contain_text("4 images")
        page.fill("#train-name", "pagered")
        page.fill("#train-trigger", "ohwx")
        page.fill("#train-task", "pagered_face")
        page.click("#train-advanced summary")
        page.fill("#train-rank", "0")  # refused by the server: shown at the field, in both languages
        page.click("#train-advanced summary")  # closed again: the error opens it
        page.click("#train-start")
        expect(page.locator("#train-rank-error")).to_contain_text("rank")
        expect(page.locator("#train-rank-error")).to_contain_text("秩")
        assert page.eval_on_selector("#train-advanced", "d => d.open")
        assert page.evaluate("document.activeElement.id") == "train-rank"

        page.fill("#train-rank", "2")
        page.fill("#train-steps", "8")
        page.click("#train-start")
        page.wait_for_function("document.querySelector('#train-status').textContent.includes('Done')", timeout=240_000)
        assert int(page.get_attribute("#train-loss", "data-points")) == 8
        steps = page.eval_on_selector_all("#train-samples figure", "fs => fs.map(f => f.dataset.step)")
        assert steps == ["0", "8"]
        assert page.eval_on_selector_all("#train-samples img", "imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
        log = page.inner_text("#train-log")
        for said in ("Uploading 4 files", "Accepted", "rank 2", "Caching", "step 8/8", "Checkpoint at step 8", "Done"):
            assert said in log, (said, log)
        run_id = page.inner_text("#train-run-id")
        assert httpx.get(f"{server.url}/api/trainings/{run_id}").json()["config"]["rank"] == 2

        row = page.locator(f"#train-runs tr[data-id='{run_id}']")  # the past trainings, with the result
        expect(row).to_have_attribute("data-status", "succeeded")
        expect(row).to_contain_text("lora/pagered")
        for link in ("Sample sheet", "Report"):
            href = row.get_by_role("link", name=link).get_attribute("href")
            assert page.request.get(server.url + href).status == 200, href
        page.screenshot(path=str(ARTIFACTS / "train-tab-done-1440x900.png"))
        page.locator("#train-history").screenshot(path=str(ARTIFACTS / "train-tab-history.png"))

        page.click("#train-use")
        assert page.is_visible("#gen-form") and not page.is_visible("#train-panel")
        assert not page.is_visible("#train-history")
        page.wait_for_function("document.querySelector('#task').value === 'pagered_face'")
        browser.close()
    assert not errors, errors
