"""bench/gpu_flux.py --tiny: the GPU benchmark's code runs end to end on CPU, so GPU minutes are not spent on bugs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_benchmark_tiny_runs_and_writes_its_table(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n<!-- gpu_flux:start -->\nold\n<!-- gpu_flux:end -->\n\nafter\n", encoding="utf-8")
    done = subprocess.run([sys.executable, "bench/gpu_flux.py", "--tiny", "--switches", "4", "--switch-reps", "4",
                           "--docs", str(docs), "--out", str(tmp_path / "out")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # the adapter names are no substring of each other's keys: diffusers' spurious "missing keys" warning stays away
    assert "missing keys" not in done.stderr + done.stdout
    text = docs.read_text(encoding="utf-8")
    assert "\nold\n" not in text and text.endswith("after\n")
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in text.splitlines() if line.startswith("| ")}
    assert {"no LoRA, eager", "no LoRA, torch.compile (eager)", "peft, eager", "fused, eager",
            "fused + torch.compile (eager)"} <= set(rows)
    assert rows["no LoRA, eager"][2] == "1.000"  # every step ratio is to this row
    assert rows["fused + torch.compile (eager)"][6] == "0"  # no recompiles across the switches after warm-up
    assert "refused by this build" in rows["fp8 (FLUX_QUANTIZE=fp8)"][1]
    # rows are printed as they are measured: the first row comes before the compile figures in the output
    assert done.stdout.index("| no LoRA, eager |") < done.stdout.index("torch.compile warm-up")
    figures = json.loads((tmp_path / "out" / "gpu_flux.json").read_text(encoding="utf-8"))
    assert [r["mode"] for r in figures["rows"]][0] == "no LoRA, eager"
    assert figures["switch_bytes"] > 0 and figures["compilations_across_switches"] == 0
    assert (tmp_path / "out" / "gpu_flux.md").read_text(encoding="utf-8").strip() in text
