"""The flux-service command line, run as a real subprocess on the demo model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

SMALL = ["--width", "64", "--height", "64", "--steps", "2"]


def run_cli(*args: str, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "FLUX_MIN_SIZE": "16", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module", autouse=True)
def _demo_built(engine):
    """Build the demo model once (in-process) before the subprocesses use the cache."""


def test_help_lists_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("generate", "compare", "lora", "tasks", "serve"):
        assert command in out.stdout


def test_generate_writes_png_and_reports_what_was_used(tmp_path):
    target = tmp_path / "host.png"
    out = run_cli("generate", "科普主持人，专业形象，微笑", "--task", "host_face", "--seed", "7", "-o", str(target),
                  "--json", "--translate", "off", *SMALL)
    assert out.returncode == 0, out.stderr
    assert Image.open(target).size == (64, 64)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert (info["task"], info["adapter_name"], info["lora_scale"], info["seed"]) == ("host_face", "host_person", 0.7, 7)
    assert info["demo"] is True
    assert f"LoRA: demo:lora/host_person/pytorch_lora_weights.safetensors [sha256 {info['adapter_hash']}]" in out.stdout
    assert "unknown token" in out.stderr  # the Chinese-prompt warning (sent as typed) reaches the terminal
    assert "denoising" in out.stderr  # the progress bar


def test_compare_puts_without_and_with_lora_side_by_side(tmp_path):
    target = tmp_path / "compare.png"
    out = run_cli("compare", "a portrait photo of a science host", "--task", "host_face", "--seed", "3",
                  "-o", str(target), "--separate", *SMALL)
    assert out.returncode == 0, out.stderr
    sheet = Image.open(target)
    without = Image.open(tmp_path / "test_without_lora.png")
    with_lora = Image.open(tmp_path / "test_with_lora.png")
    assert sheet.width > 2 * 64 and sheet.height > 64
    assert without.tobytes() != with_lora.tobytes()
    # left panel is the without-LoRA image, right panel the with-LoRA one (pasted at x=8 and x=8+64+8)
    assert sheet.crop((8, 8, 72, 72)).tobytes() == without.convert("RGB").tobytes()
    assert sheet.crop((80, 8, 144, 72)).tobytes() == with_lora.convert("RGB").tobytes()


def test_compare_refuses_a_task_without_lora(tmp_path):
    out = run_cli("compare", "a lab", "--task", "science_background", "-o", str(tmp_path / "c.png"), *SMALL)
    assert out.returncode == 2
    assert "uses no LoRA" in out.stderr
    assert "Traceback" not in out.stderr


def test_lora_inspect_reports_peft_rank_alpha_and_fit(demo_root):
    out = run_cli("lora", "inspect", str(demo_root / "lora" / "host_person" / "adapter_model.safetensors"), "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["format"], report["rank"], report["alpha"]) == ("peft", 4, 8.0)
    assert report["fits_configured_model"] is True
    assert report["layers"] == 15


def test_readme_lora_inspect_command_works_on_a_fresh_checkout_and_agrees_with_the_python_api(engine):
    """`flux-service lora inspect models/lora/host_person` (README): no models/lora here, so the demo's own."""
    out = run_cli("lora", "inspect", "models/lora/host_person", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    from tests.engine_helpers import request

    info = engine.generate(request(lora_path="models/lora/host_person")).info
    assert report["file"] == info.adapter_file == "demo:lora/host_person/pytorch_lora_weights.safetensors"
    assert report["sha256"] == info.adapter_hash
    assert report["effective_scale_at_strength_1"] == info.adapter_scales
    assert "demo's own LoRA" in out.stderr  # the stand-in is said, not only in the JSON


def test_lora_inspect_says_when_a_lora_does_not_fit(tmp_path, demo_root):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(demo_root / "lora" / "host_person" / "pytorch_lora_weights.safetensors"))
    wrong = {k: (v[:, :-1].contiguous() if "lora_A" in k else v) for k, v in sd.items()}  # other in_features
    path = tmp_path / "other_model.safetensors"
    save_file(wrong, str(path))
    out = run_cli("lora", "inspect", str(path))
    assert out.returncode == 1
    assert "fits_configured_model: False" in out.stdout
    assert "do not fit" in out.stdout


def test_lora_inspect_of_a_missing_file_is_a_clear_error(tmp_path):
    out = run_cli("lora", "inspect", str(tmp_path / "nope.safetensors"))
    assert out.returncode == 2
    assert "does not exist" in out.stderr and "Traceback" not in out.stderr


def test_tasks_prints_the_table():
    out = run_cli("tasks")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    host = next(line for line in lines if line.startswith("host_face"))
    assert "lora/host_person" in host and "0.7" in host
    assert any(line.startswith("science_background") and " none " in line for line in lines)


def test_unknown_task_lists_the_valid_ones():
    out = run_cli("generate", "x", "--task", "nope", *SMALL)
    assert out.returncode == 2
    assert "valid tasks: character_face, host_face, science_background" in out.stderr


def test_generate_takes_registered_lora_strengths_by_name(tmp_path):
    out = run_cli("generate", "a host", "--task", "science_background", "--lora", "host_person=0.4", "--seed", "3",
                  "-o", str(tmp_path / "x.png"), "--json", *SMALL)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert [(x["name"], x["scale"]) for x in info["loras"]] == [("host_person", 0.4)]
    bad = run_cli("generate", "a host", "--lora", "host_person", *SMALL)
    assert bad.returncode == 2 and "expected NAME=SCALE" in bad.stderr


def test_generate_translates_by_default_and_prints_what_was_sent(tmp_path):
    out = run_cli("generate", "科普主持人，微笑", "--seed", "7", "-o", str(tmp_path / "t.png"), "--json", *SMALL)
    assert out.returncode == 0, out.stderr
    assert "prompt sent: science show host, smiling  (translate=auto; T5 unknown 100% -> 0%)" in out.stdout
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["prompt_original"] == "科普主持人，微笑" and info["glossary_terms"][0] == ["科普主持人", "science show host"]


def test_translate_accepts_only_the_three_modes():
    out = run_cli("generate", "x", "--translate", "english")
    assert out.returncode == 2 and "invalid choice: 'english'" in out.stderr
