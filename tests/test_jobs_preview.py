"""``GET /api/jobs/{id}/events?preview=true``: live previews of the latents while a job runs."""

from __future__ import annotations

import base64
import io
import json

from tests.http_support import StepDelay, drain_jobs


def read_events(client, job_id: str, query: str = "") -> list[tuple[str, dict]]:
    events, name = [], None
    with client.stream("GET", f"/api/jobs/{job_id}/events{query}", timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
    return events


def submit(client, **fields) -> str:
    data = {"prompt": "preview", "use_model_manager": "false", "width": "128", "height": "64",
            "num_inference_steps": "20", **fields}
    r = client.post("/api/jobs", data=data)
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_preview_events_every_few_steps_as_small_jpegs(client):
    from PIL import Image

    with StepDelay(client, 0.02):
        blocker = submit(client, num_inference_steps="3")  # the stream below opens while our job waits
        job = submit(client)
        events = read_events(client, job, "?preview=true")
    drain_jobs(client, [blocker])
    previews = [d for n, d in events if n == "preview"]
    assert [p["step"] for p in previews] == list(range(2, 21, 2)), "every 2nd step of 20 (about ten previews)"
    for p in previews:
        assert p["total"] == 20 and (p["width"], p["height"]) == (16, 8)  # 1/8 of 128x64
        head, b64 = p["image"].split(",", 1)
        assert head == "data:image/jpeg;base64"
        assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (16, 8)
        assert len(p["image"]) < 16_000
    names = [n for n, _ in events]
    # a step's preview follows that step's progress event, and the stream still ends with the job
    first = names.index("preview")
    assert [d["step"] for n, d in events[:first] if n == "progress"][-1] == 2
    assert names[-1] == "succeeded"


def test_no_preview_events_unless_asked(client):
    job = submit(client, num_inference_steps="4")
    names = [n for n, _ in read_events(client, job)]
    assert "preview" not in names and names[-1] == "succeeded"


def test_a_finished_jobs_preview_stream_replays_its_terminal_event(engine):
    """Issue 17 item 9: `?preview=true` on a job that finished (only its row is left) was a 200 and then a broken
    stream (AttributeError: 'StoredJob' object has no attribute 'preview_watchers')."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.conftest import make_settings
    from tests.http_support import wait_until

    with TestClient(create_app(make_settings(), engine=engine)) as c:
        job = submit(c, num_inference_steps="2", width="32", height="32")
        wait_until(lambda: c.get(f"/api/jobs/{job}").json()["status"] == "succeeded", timeout=60)
        wait_until(lambda: c.app.state.jobs.live_count() == 0, timeout=5)  # a row now, no Job object
        events = read_events(c, job, "?preview=true")
    assert [n for n, d in events] == ["succeeded"] and events[0][1]["id"] == job
