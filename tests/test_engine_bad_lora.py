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


CASES = [
    (missing_file, AdapterNotFound),
    (truncated_file, AdapterCorrupt),
    (not_safetensors, AdapterCorrupt),
    (peft_weights_without_config, AdapterCorrupt),
    (keys_matching_no_layer, AdapterMismatch),
    (made_for_another_base_model, AdapterMismatch),
    (sdxl_kohya_lora, AdapterMismatch),
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
