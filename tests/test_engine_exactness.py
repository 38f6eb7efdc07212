"""Pixels: our wrapper adds nothing to diffusers, and each LoRA layout means exactly what its trainer meant.

Bit for bit against bare diffusers/PEFT, so this module runs the PEFT strategy (FLUX_ADAPTERS=peft)
explicitly; the fused strategy's exactness is in tests/test_fused_adapters.py.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.engine_helpers import PROMPT, SEED, bare_call, fresh_bare_pipe, pixels, request

DEMO_LORA = "lora/host_person"
# loading a second adapter into one model is what this module does on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


@pytest.fixture(scope="module")
def no_lora(peft_engine) -> np.ndarray:
    return pixels(peft_engine.generate(request()))


@pytest.fixture(scope="module")
def host_face(peft_engine) -> np.ndarray:
    return pixels(peft_engine.generate(request(task="host_face")))


def test_this_module_runs_the_peft_strategy(peft_engine):
    assert peft_engine.adapter_strategy == "peft" and peft_engine.settings.adapters == "peft"


def test_wrapper_output_equals_bare_diffusers_bit_for_bit(peft_engine, bare_pipe, no_lora):
    assert np.array_equal(no_lora, bare_call(bare_pipe))


def test_model_manager_task_without_lora_equals_bare_diffusers_bit_for_bit(peft_engine, bare_pipe):
    from model_manager import ModelManager

    image = ModelManager(engine=peft_engine).generate(task="science_background", prompt=PROMPT, width=64, height=64,
                                                 seed=SEED, num_inference_steps=2)
    assert np.array_equal(pixels(image), bare_call(bare_pipe))


def test_lora_changes_the_output(no_lora, host_face):
    assert not np.array_equal(no_lora, host_face)


def test_alpha_zero_matches_no_lora_bit_for_bit(peft_engine, no_lora):
    result = peft_engine.generate(request(task="host_face", lora_alpha=0.0))
    assert result.info.lora_scale == 0.0
    assert np.array_equal(pixels(result), no_lora)


def test_lora_output_equals_diffusers_own_lora_loading(peft_engine, demo_root, host_face):
    pipe = fresh_bare_pipe(peft_engine)
    pipe.load_lora_weights(str(demo_root / DEMO_LORA), weight_name="pytorch_lora_weights.safetensors",
                           adapter_name="reference")
    pipe.set_adapters(["reference"], [0.7])
    assert np.array_equal(bare_call(pipe), host_face)


def test_peft_layout_matches_the_same_weights_applied_by_peft_itself(peft_engine, demo_root, no_lora):
    import peft
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    folder = demo_root / DEMO_LORA
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["lora_alpha"] != cfg["r"]
    ours = peft_engine.generate(request(lora_path=str(folder / "adapter_model.safetensors"), lora_alpha=0.7))
    assert ours.info.adapter_file == "demo:lora/host_person/adapter_model.safetensors"

    pipe = fresh_bare_pipe(peft_engine)
    peft.inject_adapter_in_model(peft.LoraConfig(**cfg), pipe.transformer, adapter_name="reference")
    stored = load_file(folder / "adapter_model.safetensors")
    weights = {k.removeprefix("base_model.model."): v for k, v in stored.items()}
    result = peft.set_peft_model_state_dict(pipe.transformer, weights, adapter_name="reference")
    assert not result.unexpected_keys
    layers = [m for m in pipe.transformer.modules() if isinstance(m, LoraLayer)]
    assert len(layers) == len(cfg["target_modules"])
    for layer in layers:
        layer.set_scale("reference", 0.7)  # scaling = 0.7 * lora_alpha / r
    assert np.array_equal(bare_call(pipe), pixels(ours))
    assert not np.array_equal(pixels(ours), no_lora)


def test_diffusers_and_peft_layouts_give_identical_pixels(peft_engine, demo_root):
    folder = demo_root / DEMO_LORA
    a = peft_engine.generate(request(lora_path=str(folder / "pytorch_lora_weights.safetensors"), lora_alpha=0.7))
    b = peft_engine.generate(request(lora_path=str(folder / "adapter_model.safetensors"), lora_alpha=0.7))
    assert a.info.adapter_file == "demo:lora/host_person/pytorch_lora_weights.safetensors"
    assert b.info.adapter_file == "demo:lora/host_person/adapter_model.safetensors"
    assert np.array_equal(pixels(a), pixels(b))


def test_peft_folder_named_by_its_folder_honours_adapter_config(peft_engine, demo_root, host_face, tmp_path):
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        shutil.copy(demo_root / DEMO_LORA / name, tmp_path / name)
    result = peft_engine.generate(request(lora_path=str(tmp_path), lora_alpha=0.7))
    assert result.info.adapter_file == f"external:{tmp_path.name}/adapter_model.safetensors"
    assert np.array_equal(pixels(result), host_face)


def _kohya_flux_lora(transformer, seed: int = 7):
    """A FLUX LoRA in kohya/sd-scripts naming (fused qkv, alpha keys) and the same weights in diffusers naming.

    kohya stores one ``lora_down`` for a fused q/k/v projection; diffusers' converter gives that same
    ``lora_A`` to to_q, to_k and to_v and splits ``lora_up`` in three. With alpha = 2 * rank it folds the
    scale into ``lora_A`` (x2: exact in floating point).
    """
    import torch

    rank, alpha = 4, 8.0
    modules = dict(transformer.named_modules())
    gen = torch.Generator().manual_seed(seed)
    kohya, diffusers = {}, {}

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).contiguous()

    plain = {
        "lora_unet_double_blocks_0_img_attn_proj": "transformer_blocks.0.attn.to_out.0",
        "lora_unet_double_blocks_0_img_mlp_0": "transformer_blocks.0.ff.net.0.proj",
        "lora_unet_double_blocks_0_img_mlp_2": "transformer_blocks.0.ff.net.2",
        "lora_unet_double_blocks_0_txt_attn_proj": "transformer_blocks.0.attn.to_add_out",
        "lora_unet_single_blocks_0_linear2": "single_transformer_blocks.0.proj_out",
    }
    fused = {
        "lora_unet_double_blocks_0_img_attn_qkv": ["transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                                   "transformer_blocks.0.attn.to_v"],
        "lora_unet_double_blocks_0_txt_attn_qkv": ["transformer_blocks.0.attn.add_q_proj",
                                                   "transformer_blocks.0.attn.add_k_proj",
                                                   "transformer_blocks.0.attn.add_v_proj"],
    }
    for key, target in plain.items():
        layer = modules[target]
        down = rand(rank, layer.in_features, scale=layer.in_features**-0.5)
        up = rand(layer.out_features, rank, scale=0.5)
        kohya.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                      f"{key}.alpha": torch.tensor(alpha)})
        diffusers.update({f"transformer.{target}.lora_A.weight": down * 2, f"transformer.{target}.lora_B.weight": up})
    for key, targets in fused.items():
        layers = [modules[t] for t in targets]
        down = rand(rank, layers[0].in_features, scale=layers[0].in_features**-0.5)
        ups = [rand(layer.out_features, rank, scale=0.5) for layer in layers]
        kohya.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": torch.cat(ups).contiguous(),
                      f"{key}.alpha": torch.tensor(alpha)})
        for target, up in zip(targets, ups):
            diffusers.update({f"transformer.{target}.lora_A.weight": (down * 2).contiguous(),
                              f"transformer.{target}.lora_B.weight": up})
    return kohya, diffusers


def test_kohya_flux_lora_equals_the_same_weights_in_diffusers_layout(peft_engine, no_lora, tmp_path):
    from safetensors.torch import save_file

    kohya, diffusers = _kohya_flux_lora(peft_engine.pipe.transformer)
    save_file(kohya, str(tmp_path / "host_kohya.safetensors"))
    save_file(diffusers, str(tmp_path / "host_diffusers.safetensors"))

    a = peft_engine.generate(request(lora_path=str(tmp_path / "host_kohya.safetensors"), lora_alpha=0.7))
    b = peft_engine.generate(request(lora_path=str(tmp_path / "host_diffusers.safetensors"), lora_alpha=0.7))
    formats = {x.file.name: x.format for x in peft_engine.resident_adapters()}
    assert formats["host_kohya.safetensors"] == "kohya"
    assert not np.array_equal(pixels(a), no_lora)
    assert np.array_equal(pixels(a), pixels(b))
