"""One log line per generation, in the spirit of the users' old `LoRA loaded: ... (alpha=0.7)` check."""

from __future__ import annotations

import logging

from tests.engine_helpers import request


def _generation_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pipelines.engine" and r.levelno == logging.INFO and r.getMessage().startswith("generated")]


def test_one_log_line_per_generation_names_task_adapter_file_strength_seed_size_steps_and_time(engine, caplog):
    engine.generate(request(task="host_face", seed=99))
    (line,) = _generation_lines(caplog)
    for part in ("task=host_face", "LoRA: demo:lora/host_person/pytorch_lora_weights.safetensors [sha256 ", "alpha=0.7", "seed=99",
                 "size=64x64", "steps=2", "time="):
        assert part in line, f"{part!r} missing from: {line}"
    assert "[DEMO MODEL]" in line


def test_log_line_says_no_lora_for_a_task_without_one(engine, caplog):
    engine.generate(request(task="science_background", seed=5))
    (line,) = _generation_lines(caplog)
    assert "task=science_background" in line and "LoRA: no LoRA" in line and "seed=5" in line


def test_log_line_says_lora_off_at_strength_zero(engine, caplog):
    engine.generate(request(task="host_face", lora_alpha=0.0))
    (line,) = _generation_lines(caplog)
    assert "LoRA: off (alpha=0 for demo:lora/host_person/pytorch_lora_weights.safetensors)" in line
