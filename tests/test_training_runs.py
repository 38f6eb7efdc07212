"""The HTTP trainings' supervisor (``training/runs.py``) without a server: what is refused before a run is
queued, names reserved atomically, a registered LoRA never silently replaced, and a run that cannot start
failing with its reason instead of blocking the queue (issue 17 items 2, 3, 4, 5, 7, 15, 18). Nothing here
trains: the supervisor is only started for the queue test, whose runs fail before loading a model."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from tests.http_support import wait_until
from tests.training_support import red_photos, runs_for
from training import DatasetError, TrainingConfigError
from training.errors import DatasetTooLarge, NameTaken


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = red_photos(tmp_path_factory.mktemp("photos") / "p")
    return [(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]


def _no_run_folders(runs) -> bool:
    return not list(runs.root.glob("tr_*"))


@pytest.mark.parametrize("field, value", [("trigger", "ohwx\0"), ("task", "a/b"), ("strength", "nan"),
                                          ("resolution", "64,"), ("name", "anna\n"), ("trigger", "--resume")])
def test_bad_values_are_refused_before_anything_is_written(tmp_path, photos, field, value):
    runs = runs_for(tmp_path)
    with pytest.raises(TrainingConfigError) as err:
        runs.submit(photos, {"name": "anna", "trigger": "ohwx", field: value})
    assert err.value.param == field
    assert _no_run_folders(runs)


@pytest.mark.parametrize("filename", ["x\0.png", "x" * 300 + ".png", "..", ""])
def test_bad_filenames_are_refused_naming_the_field(tmp_path, photos, filename):
    runs = runs_for(tmp_path)
    with pytest.raises(DatasetError) as err:
        runs.submit(photos + [(filename, photos[0][1])], {"name": "anna", "trigger": "ohwx"})
    assert err.value.param == "photos" and err.value.type == "invalid_dataset"
    assert _no_run_folders(runs)


def test_duplicate_filenames_are_refused_naming_both(tmp_path, photos):
    """Item 7: `a/x.png` and `b/x.png` both became x.png and one photo was silently dropped."""
    runs = runs_for(tmp_path)
    with pytest.raises(DatasetError) as err:
        runs.submit([("a/x.png", photos[0][1]), ("b/x.png", photos[1][1])] + photos[2:],
                    {"name": "anna", "trigger": "ohwx"})
    assert "'a/x.png'" in err.value.message and "'b/x.png'" in err.value.message
    assert _no_run_folders(runs)


def test_too_many_files_is_a_413_naming_the_limit(tmp_path, photos):
    runs = runs_for(tmp_path, training_max_files=5)
    with pytest.raises(DatasetTooLarge, match="FLUX_TRAINING_MAX_FILES"):
        runs.submit(photos + [(f"c{i}.txt", b"x") for i in range(2)], {"name": "anna", "trigger": "ohwx"})


def test_three_parallel_submits_of_one_name_queue_one(tmp_path, photos):
    runs = runs_for(tmp_path)
    outcomes: list[object] = []
    barrier = threading.Barrier(3)

    def submit():
        barrier.wait()
        try:
            outcomes.append(runs.submit(photos, {"name": "anna", "trigger": "ohwx"})["status"])
        except NameTaken as exc:
            outcomes.append(exc.param)

    threads = [threading.Thread(target=submit) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["name", "name", "queued"]


def test_a_registered_lora_is_not_replaced_without_overwrite(tmp_path, photos):
    """Item 3: host_person is the LoRA of host_face and character_face (here the demo's, no folder of its
    own); training that name replaced what both tasks serve after a restart, silently."""
    runs = runs_for(tmp_path)
    with pytest.raises(NameTaken) as err:
        runs.submit(photos, {"name": "host_person", "trigger": "ohwx"})
    assert err.value.param == "name" and "host_face" in err.value.message and "character_face" in err.value.message
    assert str(tmp_path) not in err.value.message  # item 15: no server paths
    run = runs.submit(photos, {"name": "host_person", "trigger": "ohwx", "overwrite": "true"})
    assert run["replaces"] == {"lora": "host_person", "tasks": ["host_face", "character_face"]}
    assert any("host_face" in w for w in run["warnings"])


def test_messages_name_no_server_path_and_tell_http_about_skip_bad(tmp_path, photos):
    runs = runs_for(tmp_path)
    (runs.settings.models_dir / "lora" / "anna").mkdir(parents=True)
    (runs.settings.models_dir / "lora" / "anna" / "pytorch_lora_weights.safetensors").write_bytes(b"x")
    with pytest.raises(NameTaken) as err:
        runs.submit(photos, {"name": "anna", "trigger": "ohwx"})
    assert str(tmp_path) not in err.value.message and "lora/anna" in err.value.message
    with pytest.raises(DatasetError) as err:
        runs.submit(photos + [("junk.jpg", b"junk")], {"name": "bob", "trigger": "ohwx"})
    assert "skip_bad" in err.value.message and str(tmp_path) not in err.value.message
    run = runs.submit(photos + [("junk.jpg", b"junk")], {"name": "bob", "trigger": "ohwx", "skip_bad": "true"})
    assert run["dataset"]["images"] == 4 and run["dataset"]["skipped"][0]["file"] == "junk.jpg"
    with pytest.raises(DatasetError) as err:
        runs.submit([("set.zip", b"PK\3\4 not a zip")], {"name": "carl", "trigger": "ohwx"})
    assert "set.zip" in err.value.message and str(tmp_path) not in err.value.message


def _queued_run(runs, run_id: str, **fields) -> None:
    folder = runs.root / run_id
    (folder / "photos").mkdir(parents=True)
    run = {"id": run_id, "status": "queued", "created": time.time(), "name": "anna", "trigger": "ohwx",
           "task": None, "strength": 1.0, "overwrite_task": False, "source": "photos",
           "config": {"steps": 2, "rank": 4, "alpha": 4.0, "lr": 0.01, "resolutions": [64], "seed": 0,
                      "preset": "demo"}, "dataset": {}, "attempts": 0, "cancel_requested": False, "error": None,
           "exit_code": None, **fields}
    (folder / "run.json").write_text(json.dumps(run), encoding="utf-8")


def test_a_run_that_cannot_start_fails_with_its_reason_and_the_queue_moves_on(tmp_path, caplog):
    """Item 2: a queued run with a NUL in its trigger (as an older version accepted) made the supervisor
    raise 5 times a second, across restarts, and every later run stayed queued."""
    runs = runs_for(tmp_path)
    _queued_run(runs, "tr_1", trigger="ohwx\0")
    _queued_run(runs, "tr_2", name="bob")  # valid; its (empty) photo folder fails in the trainer, quickly
    caplog.set_level(logging.ERROR, logger="training.runs")
    runs.start()
    try:
        wait_until(lambda: runs.get("tr_2")["status"] == "failed", timeout=120, interval=0.2)
    finally:
        runs.stop(5)
    first, second = runs.get("tr_1"), runs.get("tr_2")
    assert first["status"] == "failed" and first["error"]["param"] == "trigger", first
    assert second["attempts"] == 1 and second["error"]["type"] == "invalid_dataset", second
    assert not [r for r in caplog.records if "supervisor error" in r.getMessage()]


def test_the_supervisor_backs_off_when_it_keeps_failing(tmp_path, monkeypatch):
    runs = runs_for(tmp_path)
    calls = []

    def broken():
        calls.append(time.monotonic())
        raise OSError("disk gone")

    monkeypatch.setattr(runs, "_tick", broken)
    runs.start()
    time.sleep(2.5)
    runs.stop(1)
    assert 2 <= len(calls) <= 5, len(calls)  # 0.2 s, then doubling: not 12 tries in 2.5 s
