"""Training event streams: one reader per run, whatever the number of subscribers (issue 17 item 19: each
subscriber re-read the run's files four times a second, 30 subscribers = 0.28 of a core). No server, no
training: a run folder written by hand, as the trainer and the supervisor write it."""

from __future__ import annotations

import asyncio
import json
import time

from app.http.training_feed import TrainingFeeds
from tests.training_support import runs_for


def _run(runs, run_id: str, status: str) -> None:
    folder = runs.root / run_id
    folder.mkdir(parents=True, exist_ok=True)
    run = {"id": run_id, "status": status, "created": time.time(), "name": "anna", "trigger": "ohwx",
           "config": {"steps": 100}, "dataset": {}}
    (folder / "run.json.tmp").write_text(json.dumps(run), encoding="utf-8")
    (folder / "run.json.tmp").replace(folder / "run.json")


def _append(runs, run_id: str, *events: dict) -> None:
    with open(runs.root / run_id / "events.jsonl", "a", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e) + "\n")


def test_thirty_subscribers_share_one_reader_and_all_get_every_event(tmp_path):
    runs = runs_for(tmp_path)
    _run(runs, "tr_1", "running")
    _append(runs, "tr_1", {"type": "phase", "phase": "training"}, {"type": "step", "step": 1, "loss": 0.5})

    async def main():
        feeds = TrainingFeeds(runs, interval=0.05)

        async def subscriber():
            return [(name, data.get("step")) async for name, data in feeds.follow("tr_1")]

        tasks = [asyncio.create_task(subscriber()) for _ in range(30)]
        await asyncio.sleep(0.3)
        feed = feeds.feeds["tr_1"]
        assert feed.subscribers == 30
        reads_before = feed.reads
        await asyncio.sleep(0.5)
        reads = feed.reads - reads_before
        assert 3 <= reads <= 15, reads  # one reader polling every 0.05 s, not 30
        _append(runs, "tr_1", {"type": "step", "step": 2, "loss": float("nan")}, {"type": "done"},
                {"type": "sample", "step": 2, "file": "samples/step-000002.png"})
        _run(runs, "tr_1", "succeeded")
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        late = [n async for n, _ in feeds.follow("tr_1")]  # a late reader gets everything from the start
        return results, late, feeds

    results, late, feeds = asyncio.run(main())
    expected = [("phase", None), ("step", 1), ("step", 2), ("sample", 2), ("succeeded", 2)]
    assert all(r == expected for r in results), results[0]
    assert late == [n for n, _ in expected]
    assert not feeds.feeds  # the reader stopped with its last subscriber
    run = runs.get("tr_1")
    assert run["losses"] == [[1, 0.5], [2, None]]  # NaN is no JSON: a diverged loss reads as null
    json.dumps(run, allow_nan=False)


def test_reading_a_run_reads_only_what_was_appended(tmp_path):
    runs = runs_for(tmp_path)
    _run(runs, "tr_2", "running")
    _append(runs, "tr_2", *({"type": "step", "step": i, "loss": 1 / i} for i in range(1, 501)))
    assert runs.get("tr_2")["step"] == 500
    log = runs.log("tr_2")
    size = (runs.root / "tr_2" / "events.jsonl").stat().st_size
    assert log._offset == size  # noqa: SLF001 - the point of the test: nothing left to read
    _append(runs, "tr_2", {"type": "step", "step": 501, "loss": 0.001})
    assert runs.get("tr_2")["step"] == 501 and len(runs.get("tr_2")["losses"]) == 501
