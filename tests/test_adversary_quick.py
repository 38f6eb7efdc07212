"""``bench/adversary.py --quick`` runs and every quick probe holds (so the script cannot rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_adversary_quick_probes_all_hold():
    out = subprocess.run([sys.executable, "bench/adversary.py", "--quick"], cwd=ROOT, capture_output=True,
                         text=True, timeout=280)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    assert "failed: 0" in out.stdout
