"""Each broken LoRA raises its typed error naming the file, and leaves the engine as it was."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from pipelines.errors import AdapterCorrupt, AdapterMismatch, AdapterNotFound
from tests.engine_helpers import adapter_names_in_model, pixels, request

DEMO_LORA = "lora/host_person"


def _save(path, tensors):
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def missing_file(tmp_path, demo_root, transformer):
    return tmp_path / "no_such_lora.safetensors"


def truncated_file(tmp_path, demo_root, transformer):
    data = (demo_root / DEMO_LORA / "pytorch_lora_weights.safetensors").read_bytes()
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


def not_safetensors(tmp_path, demo_root, transformer):
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"<html>404 Not Found</html>")
    return path


def peft_weights_without_config(tmp_path, demo_root, transformer):
    shutil.copy(demo_root / DEMO_LORA / "adapter_model.safetensors", tmp_path / "adapter_model.safetensors")
    return tmp_path / "adapter_model.safetensors"


def keys_matching_no_layer(tmp_path, demo_root, transformer):
    import torch

    return _save(tmp_path / "unmatched.safetensors", {
        "transformer.transformer_blocks.7.attn.to_q.lora_A.weight": torch.zeros(4, 32),
        "transformer.transformer_blocks.7.attn.to_q.lora_B.weight": torch.zeros(32, 4),
    })


def made_for_another_base_model(tmp_path, demo_root, transformer):
    """Right layer names, FLUX.1-dev's real widths (3072): a LoRA for a bigger FLUX than the one loaded."""
    import torch

    return _save(tmp_path / "other_base.safetensors", {
        "transformer.transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 3072),
        "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(3072, 4),
    })


def sdxl_kohya_lora(tmp_path, demo_root, transformer):
    import torch

    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    return _save(tmp_path / "sdxl_style.safetensors", {
        f"{key}.lora_down.weight": torch.zeros(4, 320),
        f"{key}.lora_up.weight": torch.zeros(320, 4),
        f"{key}.alpha": torch.tensor(4.0),
    })


def _kohya_flux(tmp_path, name, layers, extra=None):
    """kohya sd-scripts FLUX naming: lora_unet_<block>_<layer>.lora_down/lora_up/alpha."""
    import torch

    tensors = {}
    for layer, (in_f, out_f) in layers.items():
        tensors.update({f"{layer}.lora_down.weight": torch.zeros(4, in_f), f"{layer}.lora_up.weight": torch.zeros(out_f, 4),
                        f"{layer}.alpha": torch.tensor(4.0)})
    tensors.update(extra or {})
    return _save(tmp_path / name, tensors)


def kohya_flux_for_another_size(tmp_path, demo_root, transformer):
    """single_blocks linear1 is split by diffusers as FLUX.1-dev's 3072+3072+3072+12288 rows: other widths fail
    inside diffusers with an AssertionError that has no text."""
    return _kohya_flux(tmp_path, "kohya_other_size.safetensors", {"lora_unet_single_blocks_0_linear1": (32, 96)})


def kohya_flux_unknown_layer(tmp_path, demo_root, transformer):
    return _kohya_flux(tmp_path, "kohya_unknown.safetensors", {"lora_unet_double_blocks_0_img_attn_proj": (32, 32),
                                                                "lora_unet_double_blocks_0_img_attn_norm": (32, 32)})


def kohya_flux_dora(tmp_path, demo_root, transformer):
    import torch

    return _kohya_flux(tmp_path, "kohya_dora.safetensors", {"lora_unet_double_blocks_0_img_attn_proj": (32, 32)},
                       {"lora_unet_double_blocks_0_img_attn_proj.dora_scale": torch.ones(1, 32)})


CASES = [
    (missing_file, AdapterNotFound),
    (truncated_file, AdapterCorrupt),
    (not_safetensors, AdapterCorrupt),
    (peft_weights_without_config, AdapterCorrupt),
    (keys_matching_no_layer, AdapterMismatch),
    (made_for_another_base_model, AdapterMismatch),
    (sdxl_kohya_lora, AdapterMismatch),
    (kohya_flux_for_another_size, AdapterMismatch),
    (kohya_flux_unknown_layer, AdapterMismatch),
    (kohya_flux_dora, AdapterMismatch),
]


@pytest.fixture(scope="module")
def reference(each_engine):
    """host_face pixels before any bad LoRA was tried (per adapter strategy)."""
    return pixels(each_engine.generate(request(task="host_face")))


@pytest.mark.parametrize(("make", "error"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_lora_raises_typed_error_naming_the_file(engine, demo_root, tmp_path, make, error):
    path = make(tmp_path, demo_root, engine.pipe.transformer)
    with pytest.raises(error) as caught:
        engine.generate(request(lora_path=str(path), lora_alpha=0.7))
    assert type(caught.value) is error
    assert path.name in caught.value.message
    assert caught.value.path is not None and path.name in caught.value.path


@pytest.mark.parametrize(("make", "error"), CASES, ids=[c[0].__name__ for c in CASES])
def test_bad_lora_leaves_engine_usable_without_half_loaded_adapter(each_engine, demo_root, tmp_path, reference,
                                                                   make, error):
    engine = each_engine
    fused_before = dict(getattr(engine.adapters, "_deltas", {}))
    transformer = engine.pipe.transformer
    resident = engine.resident_adapters()
    in_model = adapter_names_in_model(transformer)
    configs = set(getattr(transformer, "peft_config", {}))
    path = make(tmp_path, demo_root, transformer)

    with pytest.raises(error):
        engine.generate(request(lora_path=str(path), lora_alpha=0.7))

    assert engine.resident_adapters() == resident
    assert adapter_names_in_model(transformer) == in_model
    assert set(getattr(transformer, "peft_config", {})) == configs
    assert dict(getattr(engine.adapters, "_deltas", {})) == fused_before
    assert np.array_equal(pixels(engine.generate(request(task="host_face"))), reference)


def test_sdxl_lora_error_says_it_was_made_for_a_unet_model(engine, demo_root, tmp_path):
    path = sdxl_kohya_lora(tmp_path, demo_root, engine.pipe.transformer)
    with pytest.raises(AdapterMismatch, match="UNet model such as SD 1.5/SDXL"):
        engine.generate(request(lora_path=str(path)))


@pytest.mark.parametrize(("make", "says"), [
    (kohya_flux_for_another_size, ["lora_unet_single_blocks_0_linear1", "96 rows", "21504", "another size"]),
    (kohya_flux_unknown_layer, ["lora_unet_double_blocks_0_img_attn_norm", "does not know"]),
    (kohya_flux_dora, ["DoRA", "dora_scale"]),
])
def test_kohya_flux_file_diffusers_cannot_convert_gets_the_real_reason(engine, demo_root, tmp_path, make, says):
    path = make(tmp_path, demo_root, engine.pipe.transformer)
    with pytest.raises(AdapterMismatch) as caught:
        engine.generate(request(lora_path=str(path)))
    message = caught.value.message
    for part in says:
        assert part in message, (part, message)
    assert "SD 1.5" not in message and "UNet" not in message  # every kohya FLUX key has lora_unet_: not a UNet
    assert not message.rstrip().endswith(":")


def test_bad_task_lora_is_refused_at_start_up_naming_task_file_and_reason(demo_root, tmp_path):
    from pipelines.engine import FluxEngine
    from tests.conftest import make_settings

    kohya_flux_for_another_size(tmp_path, demo_root, None)
    (tmp_path / "tasks.toml").write_text('[tasks.host]\nlora = "kohya_other_size.safetensors"\n', encoding="utf-8")
    with pytest.raises(AdapterMismatch) as caught:
        FluxEngine.from_settings(make_settings(models_dir=tmp_path))
    assert "task 'host'" in caught.value.message and "kohya_other_size.safetensors" in caught.value.message
    assert "21504" in caught.value.message
