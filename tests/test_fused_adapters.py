"""The fused strategy (FLUX_ADAPTERS=fused, the default): exact against the base model, close to PEFT, no wrappers.

Fused weights are ``cast(W0 + s * scale * B @ A)``, PEFT computes ``W0 x + s * scale * B (A x)``: the same
picture up to float rounding, so against PEFT the bound is a pixel difference (<= 2 of 255), while against the
base model (strength 0, switching back) the bound is zero: every state is rebuilt from the backup copy.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import AdapterMismatch
from tests.conftest import make_settings
from tests.engine_helpers import bare_call, fresh_bare_pipe, pixels, request

DEMO_LORA = "lora/host_person"
MAX_PIXEL_DIFF_VS_PEFT = 2
# the session PEFT engine holds several adapters in one model on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")


def _max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def test_default_strategy_is_fused_and_wraps_no_module(engine):
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert engine.adapter_strategy == "fused"
    engine.generate(request(task="host_face"))
    assert not any(isinstance(m, BaseTunerLayer) for m in engine.pipe.transformer.modules())
    assert not hasattr(engine.pipe.transformer, "peft_config")


def test_fused_strength_zero_equals_base_model_bit_for_bit(engine, bare_pipe):
    result = engine.generate(request(task="host_face", lora_alpha=0.0))
    assert result.info.lora_scale == 0.0 and result.info.adapter_strategy == "fused"
    assert np.array_equal(pixels(result), bare_call(bare_pipe))


def test_fused_switching_restores_every_weight_bit_for_bit(engine, bare_pipe):
    import torch

    engine.generate(request(task="host_face", lora_alpha=1.3))
    for task in ["host_face", "science_background", "character_face", "host_face"]:
        engine.generate(request(task=task))
    engine.adapters.activate_set([])
    reference = dict(bare_pipe.transformer.named_parameters())
    for name, param in engine.pipe.transformer.named_parameters():
        assert torch.equal(param, reference[name]), f"{name} differs from the base model after switching"


def test_fused_back_and_forth_gives_the_same_lora_pixels_bit_for_bit(engine):
    first = pixels(engine.generate(request(task="host_face", lora_alpha=0.9)))
    for task, alpha in [("science_background", None), ("host_face", 1.7), ("host_face", 0.0), ("host_face", 0.9)]:
        last = pixels(engine.generate(request(task=task, lora_alpha=alpha)))
    assert np.array_equal(last, first)


def test_fused_matches_diffusers_peft_lora_within_two_levels(engine, demo_root):
    ours = pixels(engine.generate(request(task="host_face")))
    pipe = fresh_bare_pipe(engine)
    pipe.load_lora_weights(str(demo_root / DEMO_LORA), weight_name="pytorch_lora_weights.safetensors",
                           adapter_name="reference")
    pipe.set_adapters(["reference"], [0.7])
    reference = bare_call(pipe)
    assert _max_diff(ours, reference) <= MAX_PIXEL_DIFF_VS_PEFT
    assert _max_diff(ours, bare_call(fresh_bare_pipe(engine))) > 10  # and the LoRA did change the picture


def test_fused_and_peft_strategies_agree_on_the_peft_layout_with_alpha_not_rank(engine, peft_engine, demo_root):
    path = str(demo_root / DEMO_LORA / "adapter_model.safetensors")
    fused = pixels(engine.generate(request(lora_path=path, lora_alpha=0.7)))
    peft = pixels(peft_engine.generate(request(lora_path=path, lora_alpha=0.7)))
    assert _max_diff(fused, peft) <= MAX_PIXEL_DIFF_VS_PEFT


def test_dora_is_refused_by_the_fused_strategy_with_the_way_out(engine, tmp_path):
    from tests import lora_builders as build

    folder = build.peft_lora(engine.source.path, tmp_path / "dora", use_dora=True)  # a real DoRA (magnitudes)
    with pytest.raises(AdapterMismatch, match="DoRA.*FLUX_ADAPTERS=peft"):
        engine.generate(request(lora_path=str(folder)))


def test_fused_text_encoder_lora_applies_and_strength_zero_is_exact(engine, bare_pipe, tmp_path):
    """Text-encoder LoRA tensors (``text_encoder.<module>.lora_A/B``) are fused into the CLIP encoder."""
    import torch
    from safetensors.torch import save_file

    from pipelines.lora.fused_adapters import FusedAdapters
    from pipelines.lora.weights import LoraWeights

    # the module's name as this transformers version spells it (5.x: no ``text_model.`` level)
    name = next(n for n, _ in engine.pipe.text_encoder.named_modules() if n.endswith("layers.0.self_attn.q_proj"))
    q = engine.pipe.text_encoder.get_submodule(name)
    gen = torch.Generator().manual_seed(3)
    sd = {f"text_encoder.{name}.lora_A.weight": torch.randn(4, q.in_features, generator=gen),
          f"text_encoder.{name}.lora_B.weight": torch.randn(q.out_features, 4, generator=gen)}
    save_file(sd, str(tmp_path / "te.safetensors"))
    own = fresh_bare_pipe(engine)
    adapters = FusedAdapters(own)
    adapters.load("te", LoraWeights(path=tmp_path / "te.safetensors", format="diffusers", state_dict=sd))
    before = own.text_encoder.get_submodule(name).weight.clone()
    adapters.activate_set([("te", 1.0)])
    on = bare_call(own)
    adapters.activate_set([("te", 0.0)])
    assert torch.equal(own.text_encoder.get_submodule(name).weight, before)
    assert np.array_equal(bare_call(own), bare_call(bare_pipe))
    assert not np.array_equal(on, bare_call(bare_pipe))


def test_backup_holds_one_copy_of_each_touched_weight(engine):
    touched = {d.key for deltas in engine.adapters._deltas.values() for d in deltas}
    modules = dict(engine.pipe.transformer.named_modules())
    expected = sum(modules[m].weight.numel() * modules[m].weight.element_size() for _, m in touched)
    assert engine.adapters.backup_bytes() == {"device": 0, "host": expected}  # CPU engine: host memory


def test_backup_setting_is_validated():
    with pytest.raises(ValueError):
        make_settings(fused_backup="gpu")


@pytest.mark.parametrize("config", [
    dict(r=4, lora_alpha=8),
    dict(r=4, lora_alpha=8, use_rslora=True),
    dict(r=4, lora_alpha=8, rank_pattern={"b": 2}, alpha_pattern={"b": 3}),
], ids=["alpha_over_r", "rslora", "patterns"])
def test_module_scale_equals_peft_own_scaling(config):
    """The number the fused strategy multiplies by (``LoraWeights.scale_factors()``) is the number PEFT's layers use."""
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    from pipelines.lora.weights import LoraWeights

    model = torch.nn.Module()
    model.a, model.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    inject_adapter_in_model(LoraConfig(target_modules=["a", "b"], **config), model)
    state = {}
    for name in ("a", "b"):
        rank = getattr(model, name).r["default"]
        state[f"transformer.{name}.lora_A.weight"] = torch.zeros(rank, 8)
        state[f"transformer.{name}.lora_B.weight"] = torch.zeros(8, rank)
    lora = LoraWeights(path=None, format="peft", state_dict=state, config=dict(config))
    factors = lora.scale_factors()
    for name in ("a", "b"):
        layer = getattr(model, name)
        assert isinstance(layer, LoraLayer)
        assert factors[f"transformer.{name}"] == pytest.approx(layer.scaling["default"], rel=1e-12)


def test_kohya_lora_fused_matches_peft_within_two_levels(engine, peft_engine, tmp_path):
    from safetensors.torch import save_file

    from tests.test_engine_exactness import _kohya_flux_lora

    kohya, _ = _kohya_flux_lora(engine.pipe.transformer, seed=21)
    save_file(kohya, str(tmp_path / "style_kohya.safetensors"))
    req = request(lora_path=str(tmp_path / "style_kohya.safetensors"), lora_alpha=0.8)
    fused, peft = pixels(engine.generate(req)), pixels(peft_engine.generate(req))
    assert _max_diff(fused, peft) <= MAX_PIXEL_DIFF_VS_PEFT


def test_unload_of_an_active_lora_restores_the_base_weights_and_drops_it(engine, tmp_path):
    """``FusedAdapters.unload`` (a Ray replica's LRU): an active LoRA is switched off from the backup first, then
    forgotten; the base model is bit-identical afterwards and the file loads again when asked for."""
    import numpy as np

    from tests import lora_builders as build

    folder = build.peft_lora(engine.source.path, tmp_path / "extra", use_rslora=True)
    base = pixels(engine.generate(request()))
    with_it = pixels(engine.generate(request(lora_path=str(folder), lora_alpha=1.0)))  # left active
    name = engine.adapters.active[0]
    assert engine.unload_adapter(folder) is True
    assert engine.adapters.active_set == () and name not in engine.adapters._deltas
    assert np.array_equal(pixels(engine.generate(request())), base)
    assert np.array_equal(pixels(engine.generate(request(lora_path=str(folder), lora_alpha=1.0))), with_it)
    engine.unload_adapter(folder)  # leave the session engine as it was
