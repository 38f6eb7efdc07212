"""GET /api/jobs/{id}/events: server-sent events in order, ending with exactly one terminal event."""

from __future__ import annotations

import json

from tests.http_support import SMALL, StepDelay, drain_jobs, wait_until

TERMINAL = {"succeeded", "failed", "cancelled"}


def read_events(client, job_id: str, on_event=None) -> list[tuple[str, dict]]:
    """Read the whole stream (it must end by itself after the terminal event)."""
    events, name = [], None
    with client.stream("GET", f"/api/jobs/{job_id}/events", timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                events.append((name, json.loads(line[6:])))
                if on_event:
                    on_event(events[-1])
    return events


def submit(client, **fields) -> str:
    r = client.post("/api/jobs", data={"prompt": "sse", **SMALL, **fields})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_events_arrive_in_order_and_end_with_one_terminal_event(client):
    with StepDelay(client, 0.1):
        blocker = submit(client, num_inference_steps="3")
        job = submit(client, num_inference_steps="4")
        events = read_events(client, job)
    names = [n for n, _ in events]
    assert names[0] == "queued" and events[0][1]["position"] >= 1
    assert names[-1] == "succeeded" and sum(n in TERMINAL for n in names) == 1
    assert names.index("running") < names.index("progress")
    steps = [d["step"] for n, d in events if n == "progress"]
    assert steps == sorted(steps) and steps[-1] == 4 and all(d["total"] == 4 for n, d in events if n == "progress")
    final = events[-1][1]
    assert final["id"] == job and final["status"] == "succeeded" and final["image_url"]
    drain_jobs(client, [blocker])


def test_queued_position_counts_down_while_waiting(client):
    with StepDelay(client, 0.1):
        ahead = [submit(client, num_inference_steps="3") for _ in range(2)]
        job = submit(client)
        events = read_events(client, job)
    positions = [d["position"] for n, d in events if n == "queued"]
    assert positions == sorted(positions, reverse=True) and positions[-1] == 1
    drain_jobs(client, ahead)


def test_late_reader_gets_the_current_state_first(client):
    with StepDelay(client, 0.2):
        job = submit(client, num_inference_steps="10")
        wait_until(lambda: client.get(f"/api/jobs/{job}").json()["step"] >= 3, timeout=20)
        events = read_events(client, job)
    assert events[0][0] == "running" and events[0][1]["total"] == 10
    assert events[1][0] == "progress" and events[1][1]["step"] >= 3
    assert events[-1][0] == "succeeded"


def test_reader_of_a_finished_job_gets_only_the_terminal_event(client):
    job = submit(client)
    wait_until(lambda: client.get(f"/api/jobs/{job}").json()["status"] == "succeeded", timeout=30)
    events = read_events(client, job)
    assert [n for n, _ in events] == ["succeeded"]


def test_cancelled_job_stream_ends_with_cancelled(client):
    with StepDelay(client, 0.2):
        job = submit(client, num_inference_steps="30")

        def cancel_on_progress(event):
            if event[0] == "progress" and event[1]["step"] == 2:
                client.delete(f"/api/jobs/{job}")

        events = read_events(client, job, on_event=cancel_on_progress)
    assert events[-1][0] == "cancelled" and events[-1][1]["status"] == "cancelled"
    assert max(d["step"] for n, d in events if n == "progress") < 30


def test_failed_job_stream_ends_with_failed_and_the_error(client):
    client.post("/_test/fault", json={"kind": "oom"})
    job = submit(client)
    events = read_events(client, job)
    assert events[-1][0] == "failed" and events[-1][1]["error"]["type"] == "out_of_memory"


def test_events_of_unknown_job_is_404(client):
    assert client.get("/api/jobs/nope/events").status_code == 404
