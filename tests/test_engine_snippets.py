"""The users' two scripts from the issue run verbatim on the demo model (1024x1024, the model's 28 steps).

Each runs once: on two CPU cores they take most of the engine suite's time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def user_checkout(monkeypatch, settings):
    """Run as the users do: from the repository root, no FLUX_* variables, no weights in models/."""
    import os

    for key in [k for k in os.environ if k.startswith("FLUX_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(REPO)
    assert not (REPO / "models" / "flux1-dev").exists(), "this test is about the demo model"
    # same demo cache as the session engine, so the demo model is built at most once
    monkeypatch.setenv("FLUX_DEMO_CACHE_DIR", str(settings.demo_cache_dir))


def test_model_manager_snippet_runs_verbatim(user_checkout, capsys):
    from model_manager import ModelManager
    manager = ModelManager()
    image = manager.generate(task="host_face", prompt="科普主持人，专业形象，微笑，正式着装", width=1024, height=1024)
    print(manager.lora_configs["host_face"]["lora_path"], manager.lora_configs["host_face"]["lora_alpha"])

    assert image.size == (1024, 1024)
    printed = capsys.readouterr().out.strip()
    assert printed.endswith("lora/host_person/pytorch_lora_weights.safetensors 0.7")
    info = manager.last_result.info
    assert info.demo is True and info.model == "demo"
    assert (info.task, info.adapter_file, info.lora_scale) == ("host_face", "pytorch_lora_weights.safetensors", 0.7)
    assert any("demo model" in w for w in info.warnings)
    # the glossary turned the users' prompt into English T5 can read (translate=auto by default)
    assert info.prompt == "science show host, professional look, smiling, formal attire"
    assert (info.t5_unknown_before, info.t5_unknown_after) == (1.0, 0.0)
    manager.generate(task="host_face", prompt="科普主持人", width=256, height=256, num_inference_steps=1,
                     translate="off")
    assert manager.last_result.info.prompt == "科普主持人" and manager.last_result.info.translate == "off"


def test_flux_pipeline_snippet_runs_verbatim(user_checkout):
    from pipelines.flux_pipeline import FluxPipeline
    pipe = FluxPipeline(model_path="models/flux1-dev", model_type="flux1")
    image = pipe.generate(prompt="科普主持人，专业形象，微笑",
                          lora_path="models/lora/host_person/pytorch_lora_weights.safetensors",
                          lora_alpha=0.7, width=1024, height=1024)

    assert image.size == (1024, 1024)
    info = pipe.last_result.info
    assert pipe.is_demo and info.demo is True
    assert (info.adapter_file, info.lora_scale) == ("pytorch_lora_weights.safetensors", 0.7)
    assert any("using the demo LoRA" in w for w in info.warnings)
    assert info.prompt_original == "科普主持人，专业形象，微笑" and info.prompt == "science show host, professional look, smiling"
    pipe.generate(prompt="科普主持人", width=256, height=256, num_inference_steps=1, translate="glossary")
    assert pipe.last_result.info.prompt == "science show host" and pipe.last_result.info.translate == "glossary"
