"""Every kind of LoRA file real trainers write loads exactly: pixels equal to bare PEFT / diffusers at the same
seed (strengths 1.0 and 0.5), strength 0 is the base model bit for bit, and the result names the file and its hash.

Files are made with the libraries' own writers on the demo model (tests/lora_builders.py): PEFT
``save_pretrained`` with DoRA, rsLoRA and rank/alpha patterns; diffusers ``save_lora_weights`` with
text-encoder layers (``--train_text_encoder``); a kohya sd-scripts file with ``lora_te1_`` and ``.alpha``.
Bit-exactness against PEFT/diffusers is the PEFT strategy's contract (``peft_engine``, FLUX_ADAPTERS=peft); the
default fused strategy is checked against it within two levels for every kind it fuses (all but DoRA).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from tests import lora_builders as build
from tests.engine_helpers import bare_call, fresh_bare_pipe, pixels, request

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")

PEFT_KINDS = {
    "dora": dict(use_dora=True),
    "rslora": dict(use_rslora=True),
    "patterns": dict(rank_pattern={"to_q": 2}, alpha_pattern={"ff.net.0.proj": 16}),
}


@pytest.fixture(scope="module")
def files(peft_engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("trainers")
    demo_model = peft_engine.source.path
    out = {kind: build.peft_lora(demo_model, root / kind, **cfg) / "adapter_model.safetensors"
           for kind, cfg in PEFT_KINDS.items()}
    out["text_encoder"] = build.diffusers_lora_with_text_encoder(demo_model, root / "te")
    out["kohya"] = build.kohya_flux_lora(demo_model, root / "kohya.safetensors")
    return out


@pytest.fixture(scope="module")
def base(peft_engine) -> np.ndarray:
    return pixels(peft_engine.generate(request()))


def _peft_reference(peft_engine, folder, scales):
    """PEFT itself: inject the saved config, load the saved tensors, set the scale on every LoRA layer."""
    import peft
    from peft.tuners.lora import LoraLayer
    from safetensors.torch import load_file

    pipe = fresh_bare_pipe(peft_engine)
    config = peft.LoraConfig.from_pretrained(str(folder))
    peft.inject_adapter_in_model(config, pipe.transformer, adapter_name="reference")
    stored = load_file(str(folder / "adapter_model.safetensors"))
    result = peft.set_peft_model_state_dict(
        pipe.transformer, {k.removeprefix("base_model.model."): v for k, v in stored.items()}, adapter_name="reference")
    assert not result.unexpected_keys
    out = {}
    for scale in scales:
        for layer in pipe.transformer.modules():
            if isinstance(layer, LoraLayer):
                layer.set_scale("reference", scale)
        out[scale] = bare_call(pipe)
    return out


def _diffusers_reference(peft_engine, file, scales):
    """diffusers itself: ``load_lora_weights`` (transformer and CLIP text encoder) + ``set_adapters``."""
    pipe = fresh_bare_pipe(peft_engine)
    pipe.load_lora_weights(str(file.parent), weight_name=file.name, adapter_name="reference")
    out = {}
    for scale in scales:
        pipe.set_adapters(["reference"], [scale])
        out[scale] = bare_call(pipe)
    return out


@pytest.mark.parametrize("kind", list(PEFT_KINDS))
def test_peft_kind_matches_peft_itself_at_strengths_1_and_half(peft_engine, files, base, kind):
    ref = _peft_reference(peft_engine, files[kind].parent, [1.0, 0.5])
    for scale in (1.0, 0.5):
        ours = peft_engine.generate(request(lora_path=str(files[kind]), lora_alpha=scale))
        assert np.abs(pixels(ours).astype(int) - ref[scale].astype(int)).max() == 0, (kind, scale)
        assert not np.array_equal(pixels(ours), base)


@pytest.mark.parametrize("kind", ["text_encoder", "kohya"])
def test_diffusers_kind_matches_diffusers_itself_at_strengths_1_and_half(peft_engine, files, base, kind):
    ref = _diffusers_reference(peft_engine, files[kind], [1.0, 0.5])
    for scale in (1.0, 0.5):
        ours = peft_engine.generate(request(lora_path=str(files[kind]), lora_alpha=scale))
        assert np.abs(pixels(ours).astype(int) - ref[scale].astype(int)).max() == 0, (kind, scale)
        assert not np.array_equal(pixels(ours), base)


@pytest.mark.parametrize("kind", [*PEFT_KINDS, "text_encoder", "kohya"])
def test_strength_zero_is_the_base_model_bit_for_bit(peft_engine, files, base, kind):
    peft_engine.generate(request(lora_path=str(files[kind]), lora_alpha=1.0))  # active first, then off
    assert np.array_equal(pixels(peft_engine.generate(request(lora_path=str(files[kind]), lora_alpha=0.0))), base)


@pytest.mark.parametrize("kind", ["text_encoder", "kohya"])
def test_text_encoder_part_lands_in_the_clip_text_encoder(peft_engine, files, kind):
    result = peft_engine.generate(request(lora_path=str(files[kind]), lora_alpha=1.0))
    te_adapters = set(getattr(peft_engine.pipe.text_encoder, "peft_config", {}))
    assert result.info.adapter_name in te_adapters


def test_text_encoder_lora_changes_pixels_beyond_its_transformer_part(peft_engine, files, tmp_path):
    """Dropping the text-encoder tensors changes the picture: they are applied, not ignored."""
    from safetensors.torch import load_file, save_file

    sd = load_file(str(files["text_encoder"]))
    save_file({k: v for k, v in sd.items() if k.startswith("transformer.")}, str(tmp_path / "transformer_only.safetensors"))
    full = peft_engine.generate(request(lora_path=str(files["text_encoder"]), lora_alpha=1.0))
    part = peft_engine.generate(request(lora_path=str(tmp_path / "transformer_only.safetensors"), lora_alpha=1.0))
    assert not np.array_equal(pixels(full), pixels(part))


@pytest.mark.parametrize("kind", [*PEFT_KINDS, "text_encoder", "kohya"])
def test_result_names_the_file_and_its_sha256(peft_engine, files, kind):
    info = peft_engine.generate(request(lora_path=str(files[kind]), lora_alpha=1.0)).info
    assert info.adapter_hash == hashlib.sha256(files[kind].read_bytes()).hexdigest()[:12]
    assert info.adapter_file == f"external:{files[kind].parent.name}/{files[kind].name}"


def test_result_reports_the_scale_loading_applies(peft_engine, files):
    expected = {"dora": {"all": 2.0}, "rslora": {"all": 4.0}, "kohya": {"all": 2.0}}  # 8/4, 8/sqrt(4), alpha 8/r 4
    for kind, scales in expected.items():
        assert peft_engine.generate(request(lora_path=str(files[kind]))).info.adapter_scales == scales
    patterns = peft_engine.generate(request(lora_path=str(files["patterns"]))).info.adapter_scales
    assert patterns["transformer.transformer_blocks.*.attn.to_q"] == 4.0  # rank_pattern r=2: 8/2
    assert patterns["transformer.transformer_blocks.*.ff.net.0.proj"] == 4.0  # alpha_pattern 16/4
    assert patterns["transformer.transformer_blocks.*.attn.to_k"] == 2.0


@pytest.mark.parametrize("kind", [*PEFT_KINDS, "text_encoder", "kohya"])
def test_inspect_and_results_agree_on_hash_rank_and_effective_scale(peft_engine, files, settings, kind):
    from pipelines.lora.inspect import inspect_lora

    report = inspect_lora(str(files[kind]), settings)
    info = peft_engine.generate(request(lora_path=str(files[kind]))).info
    assert report["sha256"] == info.adapter_hash
    assert report["file"] == info.adapter_file
    assert report["effective_scale_at_strength_1"] == info.adapter_scales
    assert (report["rank"] if isinstance(report["rank"], int) else max(report["rank"].values())) == info.adapter_rank
    assert report["fits_configured_model"] is True
    assert report["dora"] is (kind == "dora") and report["rslora"] is (kind == "rslora")


def test_inspect_reports_components_kohya_alpha_and_digits_in_module_names(files, settings):
    from pipelines.lora.inspect import inspect_lora

    kohya = inspect_lora(str(files["kohya"]), settings)
    assert kohya["format"] == "kohya" and kohya["alpha"] == 8.0  # the stored .alpha tensors, applied by loading
    assert kohya["components"] == ["transformer", "CLIP text encoder"]
    patterns = inspect_lora(str(files["patterns"]), settings)
    assert "transformer.transformer_blocks.*.ff.net.0.proj" in patterns["target_modules"]
    assert patterns["alpha"] == {"default": 8.0, "ff.net.0.proj": 16.0}
    assert patterns["rank"]["transformer.transformer_blocks.*.attn.to_q"] == 2


def test_switching_from_a_text_encoder_lora_to_a_transformer_only_one_leaves_no_residue(peft_engine, files):
    before = pixels(peft_engine.generate(request(task="host_face")))
    peft_engine.generate(request(lora_path=str(files["text_encoder"]), lora_alpha=1.0))
    assert np.array_equal(pixels(peft_engine.generate(request(task="host_face"))), before)


@pytest.mark.parametrize("kind", ["rslora", "patterns", "text_encoder", "kohya"])
def test_fused_strategy_matches_peft_on_every_kind_it_fuses(engine, peft_engine, files, kind):
    """The fused default scales each module by ``LoraWeights.scale_factors()``: the picture is PEFT's within
    float rounding (rsLoRA's alpha/sqrt(r), rank/alpha patterns, text-encoder layers, kohya's folded alphas)."""
    req = request(lora_path=str(files[kind]), lora_alpha=0.8)
    fused, peft = pixels(engine.generate(req)), pixels(peft_engine.generate(req))
    assert engine.adapter_strategy == "fused" and not np.array_equal(fused, pixels(engine.generate(request())))
    assert np.abs(fused.astype(int) - peft.astype(int)).max() <= 2
