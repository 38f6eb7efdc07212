"""bench/gpu_flux.py --tiny: the GPU benchmark's code runs end to end on CPU, so GPU minutes are not spent on bugs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_tiny_runs_and_writes_its_table(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- gpu_flux:start -->\nold\n<!-- gpu_flux:end -->\n\nafter\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "bench/gpu_flux.py", "--tiny", "--switches", "4", "--switch-reps", "4",
                           "--docs", str(docs)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    text = docs.read_text(encoding="utf-8")
    assert "\nold\n" not in text and text.endswith("after\n")
    rows = {line.split(" | ")[0].lstrip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert {"peft, eager", "fused, eager", "fused + torch.compile (eager)"} <= set(rows)
    assert rows["fused + torch.compile (eager)"].split(" | ")[4] == "0"  # no recompiles across the switches
    assert "refused by this build" in rows["fp8 (FLUX_QUANTIZE=fp8)"]
