"""Switching tasks and strengths: no residue, per-call strength, shared resident adapters, no file re-reads."""

from __future__ import annotations

import numpy as np
import pytest

import pipelines.lora.residency
from pipelines.tasks import load_task_table
from tests.engine_helpers import bare_call, pixels, request


def test_task_switching_back_and_forth_leaves_no_residue(engine, bare_pipe):
    first_host = pixels(engine.generate(request(task="host_face")))
    never_lora = bare_call(bare_pipe)  # what a process that never loaded a LoRA draws
    for task in ["science_background", "host_face", "science_background", "host_face", "science_background"]:
        got = pixels(engine.generate(request(task=task)))
        expected = first_host if task == "host_face" else never_lora
        assert np.array_equal(got, expected), f"{task} differs after switching"


def test_per_call_strength_applies_to_that_call_only(engine):
    default = engine.generate(request(task="host_face"))
    strong = engine.generate(request(task="host_face", lora_alpha=1.5))
    again = engine.generate(request(task="host_face"))
    assert (default.info.lora_scale, strong.info.lora_scale, again.info.lora_scale) == (0.7, 1.5, 0.7)
    assert not np.array_equal(pixels(strong), pixels(default))
    assert np.array_equal(pixels(again), pixels(default))


@pytest.mark.parametrize("strategy", ["fused", "peft"])
def test_tasks_naming_the_same_lora_share_one_resident_adapter(engine, peft_engine, strategy):
    engine = engine if strategy == "fused" else peft_engine
    host = engine.generate(request(task="host_face"))
    character = engine.generate(request(task="character_face"))
    assert host.info.adapter_name == character.info.adapter_name == "host_person"
    assert [a.file.name for a in engine.resident_adapters() if a.name == "host_person"] == [
        "pytorch_lora_weights.safetensors"]
    transformer = engine.pipe.transformer
    in_model = getattr(transformer, "peft_config", {}) if strategy == "peft" else engine.adapters._deltas
    assert sum(1 for name in in_model if name.startswith("host_person")) == sum(
        1 for a in engine.resident_adapters() if a.name.startswith("host_person"))
    assert np.array_equal(pixels(host), pixels(character))  # same LoRA, same strength, same (empty) template


def test_generate_never_rereads_lora_files(engine, demo_root, monkeypatch):
    engine.generate(request(task="host_face"))  # make sure the task's adapter is resident
    reads = []
    real_read_lora = pipelines.lora.residency.read_lora
    monkeypatch.setattr(pipelines.lora.residency, "read_lora", lambda path: reads.append(path) or real_read_lora(path))
    resident = engine.resident_adapters()

    for task in ["host_face", "character_face", "science_background", "host_face"]:
        engine.generate(request(task=task))
    engine.generate(request(lora_path=str(demo_root / "lora/host_person/pytorch_lora_weights.safetensors")))
    engine.generate(request(task="host_face", lora_alpha=1.2))

    assert reads == []
    assert engine.resident_adapters() == resident


def test_requests_do_not_touch_task_lora_files_after_start_up(engine, tmp_path, settings):
    """The adapter is resident: moving the LoRA folder away after start-up changes nothing for requests."""
    import shutil

    from pipelines.engine import FluxEngine

    models = tmp_path / "models"
    shutil.copytree(engine.source.models_root / "lora", models / "lora")
    (models / "tasks.toml").write_text('[tasks.host_face]\nlora = "lora/host_person"\nlora_alpha = 0.7\n',
                                       encoding="utf-8")
    own = FluxEngine(engine.pipe.__class__.from_pretrained(str(engine.source.path), local_files_only=True),
                     engine.source.__class__(engine.source.path, models, True, engine.source.model_type),
                     settings.model_copy(update={"models_dir": models}), "cpu", engine.dtype,
                     load_task_table(models / "tasks.toml"))
    before = pixels(own.generate(request(task="host_face")))
    shutil.rmtree(models / "lora")
    after = own.generate(request(task="host_face"))
    assert after.info.adapter_name == "host_person"
    assert np.array_equal(pixels(after), before)
    assert own.task_infos()[0].adapter_file == "lora/host_person/pytorch_lora_weights.safetensors"
    assert not any("demo" in w for w in after.info.warnings if "LoRA" in w)  # the user's own file, no stand-in
