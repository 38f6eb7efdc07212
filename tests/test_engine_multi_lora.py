"""Several LoRAs per request: registered by name in the task table, combined by tasks and requests.

A second LoRA (``film_look``, random weights on other layers than host_person's too) is written next to a
copy of the demo LoRA, with a task table registering both; one engine per strategy reads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from pipelines.errors import ConfigError, InvalidRequest
from tests.conftest import make_settings
from tests.engine_helpers import pixels, request

MAX_PIXEL_DIFF_VS_PEFT = 2
# the PEFT engine holds two adapters in one model on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
TASKS = """
[loras.host_person]
path = "lora/host_person"
description = "the host"

[loras.film_look]
path = "lora/film_look/pytorch_lora_weights.safetensors"
description = "a film style"

[tasks.host_face]
lora = "host_person"
lora_alpha = 0.7

[tasks.host_on_film]
loras = { host_person = 0.7, film_look = 0.4 }

[tasks.plain]
lora = ""
"""


def _film_look(transformer, path, seed: int = 11) -> None:
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    sd = {}
    for name in ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.ff.net.2",
                 "single_transformer_blocks.0.proj_out", "transformer_blocks.0.attn.to_out.0"):
        layer = modules[name]
        sd[f"transformer.{name}.lora_A.weight"] = torch.randn(4, layer.in_features, generator=gen) / layer.in_features**0.5
        sd[f"transformer.{name}.lora_B.weight"] = torch.randn(layer.out_features, 4, generator=gen) * 0.5
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(path))


def write_models(engine, root: Path) -> Path:
    """A models folder with the demo's host_person, a film_look style LoRA and ``TASKS`` (also the Ray tests')."""
    shutil.copytree(engine.source.models_root / "lora" / "host_person", root / "lora" / "host_person")
    _film_look(engine.pipe.transformer, root / "lora" / "film_look" / "pytorch_lora_weights.safetensors")
    (root / "tasks.toml").write_text(TASKS, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def models(engine, tmp_path_factory):
    return write_models(engine, tmp_path_factory.mktemp("multi") / "models")


def _engine(engine, models, adapters: str):
    from pipelines.engine import FluxEngine
    from pipelines.tasks import load_task_table

    pipe = engine.pipe.__class__.from_pretrained(str(engine.source.path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    # registered paths are relative to the models folder (FLUX_MODELS_DIR), as for every LoRA path
    return FluxEngine(pipe, engine.source, make_settings(adapters=adapters, models_dir=models), "cpu", engine.dtype,
                      load_task_table(models / "tasks.toml"))


@pytest.fixture(scope="module")
def fused(engine, models):
    return _engine(engine, models, "fused")


@pytest.fixture(scope="module")
def peft(engine, models):
    return _engine(engine, models, "peft")


def test_task_with_two_loras_reports_both(fused):
    info = fused.generate(request(task="host_on_film")).info
    assert [(x["name"], x["scale"]) for x in info.loras] == [("host_person", 0.7), ("film_look", 0.4)]
    assert (info.adapter_name, info.lora_scale) == ("host_person", 0.7)  # the first, as before
    assert all(len(x["sha256"]) == 64 for x in info.loras)


def test_request_loras_add_a_style_to_a_one_lora_task_exactly_like_the_two_lora_task(fused):
    both = pixels(fused.generate(request(task="host_on_film")))
    added = fused.generate(request(task="host_face", loras=(("film_look", 0.4),)))
    assert [(x["name"], x["scale"]) for x in added.info.loras] == [("host_person", 0.7), ("film_look", 0.4)]
    assert np.array_equal(pixels(added), both)
    assert not np.array_equal(both, pixels(fused.generate(request(task="host_face"))))


def test_a_lora_at_strength_zero_equals_the_set_without_it_bit_for_bit(fused):
    without = pixels(fused.generate(request(task="host_face")))
    zeroed = fused.generate(request(task="host_on_film", loras=(("film_look", 0.0),)))
    assert np.array_equal(pixels(zeroed), without)
    all_off = fused.generate(request(task="host_on_film", loras=(("host_person", 0), ("film_look", 0))))
    assert np.array_equal(pixels(all_off), pixels(fused.generate(request(task="plain"))))


def test_fused_and_peft_give_the_same_picture_for_the_same_set(fused, peft):
    for req in (request(task="host_on_film"), request(task="plain", loras=(("film_look", 1.2), ("host_person", 0.3)))):
        a, b = pixels(fused.generate(req)), pixels(peft.generate(req))
        assert int(np.abs(a.astype(np.int16) - b).max()) <= MAX_PIXEL_DIFF_VS_PEFT


def test_lora_alpha_on_a_task_with_several_loras_points_to_loras(fused):
    with pytest.raises(InvalidRequest, match="several.*host_person, film_look.*`loras`") as caught:
        fused.plan(request(task="host_on_film", lora_alpha=0.5))
    assert caught.value.param == "lora_alpha"


@pytest.mark.parametrize(("loras", "complaint"), [
    ((("film_lok", 0.4),), "'film_lok' is not a registered LoRA; registered: host_person, film_look"),
    ((("lora/film_look", 0.4),), "looks like a path"),
    ((("film_look", 2.5),), "between 0.0 and 2.0, got 2.5"),
    ((("film_look", 0.4), ("film_look", 0.5)), "listed twice"),
], ids=["unknown", "path", "out_of_range", "twice"])
def test_bad_request_loras_are_refused_naming_the_field(fused, loras, complaint):
    with pytest.raises(InvalidRequest) as caught:
        fused.plan(request(task="host_face", loras=loras))
    assert caught.value.param == "loras"
    assert complaint in caught.value.message


def test_lora_alpha_and_loras_naming_the_same_lora_is_refused(fused):
    with pytest.raises(InvalidRequest, match="both `lora_alpha` and `loras`"):
        fused.plan(request(task="host_face", lora_alpha=0.5, loras=(("host_person", 0.6),)))


def test_model_manager_takes_loras_by_name(fused):
    from model_manager import ModelManager

    result = ModelManager(engine=fused).generate_result(task="host_face", prompt="a host", width=64, height=64,
                                                        num_inference_steps=2, seed=5, loras={"film_look": 0.4})
    assert [x["name"] for x in result.info.loras] == ["host_person", "film_look"]


def test_lora_infos_list_hash_rank_targets_and_tasks(fused):
    infos = {x["name"]: x for x in fused.lora_infos()}
    assert set(infos) == {"host_person", "film_look"}
    film = infos["film_look"]
    assert (film["rank"], film["layers"], film["tasks"]) == (4, 4, ["host_on_film"])
    assert "transformer_blocks.*.attn.to_q" in film["targets"] and len(film["sha256"]) == 64
    assert "/" not in film["file"] and not film["path"].startswith("/")


@pytest.mark.parametrize(("body", "complaint"), [
    ('[tasks.t]\nloras = { nope = 0.5 }\n', "'nope' is not registered"),
    ('[loras.a]\npath = "lora/host_person"\n[tasks.t]\nlora = "a"\nloras = { a = 0.5 }\n', "not both"),
    ('[loras.a]\npath = "lora/host_person"\n[tasks.t]\nloras = { a = 2.5 }\n', "between 0.0 and 2.0"),
    ('[loras.a]\npaht = "lora/host_person"\n[tasks.t]\nlora = ""\n', "loras.a: path: Field required; paht: Extra inputs"),
], ids=["unregistered", "both_forms", "strength", "misspelt_path"])
def test_lora_registry_errors_name_the_file_and_the_problem(tmp_path, body, complaint):
    from pipelines.tasks import load_task_table

    (tmp_path / "tasks.toml").write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_task_table(tmp_path / "tasks.toml")
    assert str(tmp_path / "tasks.toml") in caught.value.message and complaint in caught.value.message
