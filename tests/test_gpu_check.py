"""bench/gpu_check.sh: the prepared GPU run works end to end on CPU (``--tiny``), and its wheel list is complete."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

from bench.gpu_env_check import pins, project_requirements

ROOT = Path(__file__).resolve().parents[1]


def _pins() -> dict[str, str]:
    return {name.lower(): version for name, version in pins().items()}


def _image_has() -> set[str]:
    """The names gpu_wheels.txt says the GPU image already provides (its 'already has:' comment)."""
    text = (ROOT / "bench" / "gpu_wheels.txt").read_text(encoding="utf-8")
    block = text.split("already has:", 1)[1].split(". Its", 1)[0]
    return {n.strip().lstrip("#").strip().lower() for n in re.split(r"[,\n]", block) if n.strip().lstrip("#").strip()}


def test_every_requirement_is_brought_as_a_wheel_or_provided_by_the_image():
    pins, image = _pins(), _image_has()
    for text in project_requirements():
        req = Requirement(text)
        name = req.name.lower()
        assert name in pins or name in image, f"{name}: neither in bench/gpu_wheels.txt nor in the image"
        if name in pins:
            assert req.specifier.contains(pins[name]), f"{name}=={pins[name]} is outside pyproject's {req.specifier}"


def test_gpu_check_tiny_runs_every_step_on_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    done = subprocess.run(["bash", "bench/gpu_check.sh", "--tiny"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text(encoding="utf-8").splitlines()
    assert [line.split(":")[0] for line in summary] == ["env", "smoke", "bench", "bound", "memory"]
    assert all(": ok in " in line for line in summary), summary
    files = {p.name for p in tmp_path.iterdir()}
    assert {"gpu_check.log", "smoke.xml", "gpu_flux.md", "gpu_flux.json", "fused_vs_peft.md", "flux_memory.md"} <= files
    assert len(files) <= 8  # the device tool brings back 8 files
    assert "| fused vs peft |" in (tmp_path / "fused_vs_peft.md").read_text(encoding="utf-8")
