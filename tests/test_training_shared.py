"""Two processes on one trainings folder (Ray ingress replicas, a rolling update's two ingresses): only one
supervises. Before, the second one's start-up took the first one's running training for an interrupted one and
stopped its trainer (``cancel`` file), then waited up to a minute for it to go."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from tests.conftest import make_settings
from tests.http_support import wait_until


def test_a_second_process_leaves_the_running_training_alone_and_supervises_once_the_first_stops(tmp_path):
    from training.runs import TrainingRuns

    settings = make_settings(trainings_dir=tmp_path)
    first = TrainingRuns(settings, demo=True, device="cpu").start()
    trainer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # the first one's trainer
    run = tmp_path / "tr_20261204000000abcdef"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"id": run.name, "status": "running", "pid": trainer.pid,
                                              "created": time.time(), "name": "anna"}))
    second = None
    try:
        started = time.monotonic()
        second = TrainingRuns(settings, demo=True, device="cpu").start()
        assert time.monotonic() - started < 5  # it did not wait for the other's trainer to stop
        assert first.supervising and not second.supervising
        assert not (run / "cancel").exists() and trainer.poll() is None
        assert json.loads((run / "run.json").read_text())["status"] == "running"
        shutil.rmtree(run)
        first.stop(grace_s=1)
        wait_until(lambda: second.supervising, timeout=10)  # the lock passed on when the first one stopped
    finally:
        trainer.kill()
        first.stop(grace_s=1)
        if second is not None:
            second.stop(grace_s=1)
