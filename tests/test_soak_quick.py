"""bench/soak.py --quick: the soak benchmark's steps on a short clock, so the script cannot rot.

Mixed direct requests and jobs, client disconnects, one SIGTERM + restart on the same data folder; the script
itself checks that no accepted job was lost and that nothing failed (exit status 1 otherwise).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.http_support import ROOT


@pytest.mark.timeout(900)  # ~40 s on a quiet 2-core machine; two server start-ups dominate on a loaded one
def test_soak_quick_loses_no_accepted_job_across_a_sigterm_and_restart():
    run = subprocess.run([sys.executable, "bench/soak.py", "--quick", "--json"], cwd=ROOT, capture_output=True,
                         text=True, timeout=880)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    assert figures["jobs_lost"] == 0 and figures["failed"] == 0
    assert figures["jobs_accepted"] >= 1 and figures["succeeded"] >= 1
    assert figures["sigterm_exit_s"] < figures["grace_s"] + 5
