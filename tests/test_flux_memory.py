"""bench/flux_memory.py: FLUX.1-dev's memory counted on the meta device, and counted the way the code holds it."""

from __future__ import annotations

import json

import pytest

from bench.flux_arch import random_lora, targets
from bench.flux_memory import backup_figures, main, measure
from tests.engine_helpers import fresh_bare_pipe


@pytest.fixture(scope="module")
def full():
    return measure(rank=16)


def test_full_size_parts_have_flux1_dev_sizes(full):
    parts = full["parts"]
    assert round(parts["transformer"]["params"] / 1e9, 2) == 11.90  # shared/ANCHORS.md
    assert round(parts["text_encoder_2"]["bytes"] / 1e9, 1) == 9.5  # T5-XXL encoder in bf16, as published
    assert round(parts["text_encoder"]["bytes"] / 1e9, 2) == 0.25  # CLIP-L
    assert full["serving_bytes"] == sum(p["bytes"] for p in parts.values())


def test_fused_backup_of_the_usual_lora_is_342_weights_and_about_ten_gib(full):
    by_set = {b["targets"]: b for b in full["backup"]}
    assert by_set["attn+ff"]["weights"] == 342
    assert round(by_set["attn+ff"]["backup_bytes"] / 2**30, 1) == 10.0
    assert by_set["attn"]["backup_bytes"] < by_set["attn+ff"]["backup_bytes"] < by_set["trainer"]["backup_bytes"]


def test_a_full_size_switch_moves_8_bytes_per_parameter_in_bf16_not_20(full):
    """The fused strategy's own switch, run on the meta-device FLUX.1-dev weights and counted (bench/traffic.py)."""
    sw = full["switch"]
    assert round(sw["params"] / 1e9, 2) == 5.38  # the 342 attention + feed-forward weights
    assert sw["float32_bytes"] == 0
    assert round(sw["bytes"] / sw["params"]) == 8 and round(sw["former_bytes"] / sw["params"]) == 20


@pytest.mark.parametrize("which", ["attn+ff", "trainer"])
def test_backup_figure_is_what_the_fused_strategy_holds(engine, which):
    """The script's formula against ``FusedAdapters.backup_bytes()`` after loading such a LoRA (demo model)."""
    from pipelines.lora.fused_adapters import FusedAdapters

    pipe = fresh_bare_pipe(engine)
    adapters = FusedAdapters(pipe)
    adapters.load("probe", random_lora(pipe.transformer, 4, seed=1, which=which))
    assert adapters.backup_bytes()["host"] == backup_figures(pipe.transformer, which, 4)["backup_bytes"]


def test_trainer_target_set_is_what_the_trainer_adapts(engine):
    from peft import LoraConfig

    from training.config import TARGET_MODULES

    pipe = fresh_bare_pipe(engine)
    expected = set(targets(pipe.transformer, "trainer"))
    pipe.transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=list(TARGET_MODULES)))
    adapted = {n for n, m in pipe.transformer.named_modules() if hasattr(m, "lora_A")}
    assert adapted == expected


def test_command_line_json_and_bad_target(capsys):
    assert main(["--json", "--targets", "attn", "--rank", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [b["targets"] for b in out["backup"]] == ["attn"] and out["rank"] == 8
    with pytest.raises(SystemExit):
        main(["--targets", "everything"])
    assert "unknown target set 'everything'" in capsys.readouterr().err
