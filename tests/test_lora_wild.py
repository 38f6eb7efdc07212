"""LoRA files from the wild (issue 19): each tool's layout loads as the merge the file itself asks for.

Files are written with each tool's key naming and math (tests/lora_wild_builders.py); the expected picture is
a bare diffusers pipeline whose weights were set to ``W0 + strength * delta``, with ``delta`` read from the file
by the tests' own reader (tests/lora_wild_reference.py). Bounds, float32 on the CPU, 64x64, 2 steps: the
service's picture within 2/255 of that merge at strengths 1.0 and 0.5, the fused and peft strategies within
2/255 of each other on every file both accept, strength 0 the base model bit for bit. A file the peft strategy
cannot hold in PEFT's layers is refused there, naming the reason and the fused default.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import AdapterMismatch
from tests import lora_builders as build
from tests import lora_wild_builders as wild
from tests.engine_helpers import bare_call, fresh_bare_pipe, pixels, request
from tests.lora_wild_reference import MergedPipe, dora_delta, reference_deltas

pytestmark = pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
MAX_DIFF = 2  # of 255, float32 on the CPU

#: layout -> (writer, keyword arguments, what the peft strategy does: None = loads it, else words of its refusal)
LAYOUTS = {
    "lycoris_lokr": (wild.lycoris_simpletuner, dict(algo="lokr"), None),
    "lycoris_lokr_simpletuner_default": (wild.lycoris_simpletuner, dict(algo="lokr", rank=10000, factor=16,
                                                                        full_matrix=True), None),
    "lycoris_loha": (wild.lycoris_simpletuner, dict(algo="loha", alpha=4.0), None),
    "lycoris_kohya_lokr": (wild.lycoris_kohya, dict(algo="lokr"), "cut across their Kronecker blocks"),
    "lycoris_kohya_loha": (wild.lycoris_kohya, dict(algo="loha"), None),
    "comfyui_extracted": (wild.comfyui_extracted, {}, None),
    "comfyui_full_diff": (wild.comfyui_extracted, dict(full_diff=True), "full weight difference"),
    "onetrainer_comfy": (wild.onetrainer, dict(output="comfy"), None),
    "onetrainer_legacy": (wild.onetrainer, dict(output="legacy"), None),
    "onetrainer_kohya": (wild.onetrainer, dict(output="kohya"), None),
}


def _max_diff(a, b) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


@pytest.fixture(scope="module")
def files(engine, tmp_path_factory):
    root = tmp_path_factory.mktemp("wild")
    demo = engine.source.path
    return {name: make(demo, root / f"{name}.safetensors", **kw) for name, (make, kw, _) in LAYOUTS.items()}


@pytest.fixture(scope="module")
def merged(engine):
    return MergedPipe(fresh_bare_pipe(engine))


@pytest.fixture(scope="module")
def base(engine) -> np.ndarray:
    return pixels(engine.generate(request()))


def _reference(merged, path, strength):
    pipe = merged.pipe
    merged.apply(reference_deltas(path, pipe.transformer, pipe.text_encoder), strength)
    try:
        return bare_call(pipe)
    finally:
        merged.restore()


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_loads_as_the_merge_the_file_asks_for_in_both_strategies(engine, peft_engine, files, merged, base,
                                                                        layout):
    path, refusal = files[layout], LAYOUTS[layout][2]
    for strength in (1.0, 0.5):
        reference = _reference(merged, path, strength)
        fused = pixels(engine.generate(request(lora_path=str(path), lora_alpha=strength)))
        assert _max_diff(fused, reference) <= MAX_DIFF, (layout, strength)
        assert _max_diff(fused, base) > 10, "the file changed nothing: the test could not fail"
        if refusal is None:
            peft = pixels(peft_engine.generate(request(lora_path=str(path), lora_alpha=strength)))
            assert _max_diff(peft, reference) <= MAX_DIFF, (layout, strength)
            assert _max_diff(peft, fused) <= MAX_DIFF, (layout, strength)
    assert np.array_equal(pixels(engine.generate(request(lora_path=str(path), lora_alpha=0.0))), base)
    if refusal is None:
        assert np.array_equal(pixels(peft_engine.generate(request(lora_path=str(path), lora_alpha=0.0))), base)
    else:
        with pytest.raises(AdapterMismatch) as caught:
            peft_engine.generate(request(lora_path=str(path)))
        assert refusal in caught.value.message and "FLUX_ADAPTERS=fused" in caught.value.message
        assert path.name in caught.value.message


def test_dora_is_fused_exactly_as_peft_computes_it(engine, peft_engine, merged, base, tmp_path):
    """Issue 19 item 4: PEFT DoRA under the fused default, merged at switch time from the backup."""
    import json

    from safetensors.torch import load_file

    folder = build.peft_lora(engine.source.path, tmp_path / "dora", use_dora=True)
    saved = load_file(str(folder / "adapter_model.safetensors"))
    stored = {k.removeprefix("base_model.model."): v for k, v in saved.items()}
    config = json.loads((folder / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    params = dict(merged.pipe.transformer.named_parameters())
    for strength in (1.0, 0.5):
        weights = {}
        for key in stored:
            if key.endswith(".lora_A.weight"):
                module = key.removesuffix(".lora_A.weight")
                w0 = params[f"{module}.weight"].detach()
                weights[("transformer", f"{module}.weight")] = w0 + dora_delta(
                    w0, stored[f"{module}.lora_B.weight"], stored[key],
                    stored[f"{module}.lora_magnitude_vector"], scale, strength)
        merged.set(weights)
        try:
            reference = bare_call(merged.pipe)
        finally:
            merged.restore()
        fused = pixels(engine.generate(request(lora_path=str(folder), lora_alpha=strength)))
        peft = pixels(peft_engine.generate(request(lora_path=str(folder), lora_alpha=strength)))
        assert engine.adapter_strategy == "fused"
        assert _max_diff(fused, reference) <= MAX_DIFF and _max_diff(fused, peft) <= MAX_DIFF, strength
        assert _max_diff(fused, base) > 10
    assert np.array_equal(pixels(engine.generate(request(lora_path=str(folder), lora_alpha=0.0))), base)


def test_kohya_alpha_and_diffusers_header_disagreeing_get_one_reading_and_a_warning(engine, peft_engine, merged,
                                                                                    tmp_path, caplog):
    """Issue 19 item 5: sd-scripts' converter writes ``.alpha`` = rank (x1) and keeps the diffusers header
    (``lora_alpha=16, r=4``: x4). Both strategies use the header (how the adapter was trained, and what diffusers
    reads), and the result warns naming both values."""
    path = wild.kohya_converted_from_diffusers(engine.source.path, tmp_path / "converted.safetensors")
    deltas = {k: v * 4.0 for k, v in reference_deltas(path, merged.pipe.transformer, merged.pipe.text_encoder).items()}
    merged.apply(deltas, 0.8)
    try:
        reference = bare_call(merged.pipe)
    finally:
        merged.restore()
    results = [e.generate(request(lora_path=str(path), lora_alpha=0.8)) for e in (engine, peft_engine)]
    fused, peft = (pixels(r) for r in results)
    assert _max_diff(fused, reference) <= MAX_DIFF and _max_diff(peft, fused) <= MAX_DIFF
    for result in results:
        warning = next(w for w in result.info.warnings if "lora_alpha" in w)
        assert "16" in warning and "r=4" in warning and "alpha" in warning and "x4" in warning and "x1" in warning
        assert result.info.adapter_scales == {"all": 4.0}


def test_a_bfl_split_uses_the_loaded_models_sizes(engine, files):
    """Issue 19 item 6: the demo model is 32 wide (FLUX.1-dev: 3072); its linear1 splits into 32+32+32+128 rows."""
    from pipelines.lora.bfl_names import FluxDims
    from pipelines.lora.files import read_lora

    lora = read_lora(files["onetrainer_kohya"], dims=FluxDims.from_shapes(
        {n: (m.in_features, m.out_features) for n, m in engine.pipe.transformer.named_modules()
         if hasattr(m, "in_features")}))
    ranks = lora.state_dict
    assert ranks["transformer.single_transformer_blocks.0.proj_mlp.lora_B.weight"].shape[0] == 128
    assert ranks["transformer.single_transformer_blocks.0.attn.to_v.lora_B.weight"].shape[0] == 32


@pytest.mark.parametrize("make", [
    lambda t: {"lora_unet_double_blocks_0_img_attn_proj.hada_w1_a": t.zeros(32, 2),
               "lora_unet_double_blocks_0_img_attn_proj.hada_w1_b": t.zeros(2, 32),
               "lora_unet_double_blocks_0_img_attn_proj.hada_w2_a": t.zeros(32, 2),
               "lora_unet_double_blocks_0_img_attn_proj.hada_w2_b": t.zeros(2, 32),
               "lora_unet_double_blocks_0_img_attn_proj.hada_t1": t.zeros(2, 2, 3, 3),
               "lora_unet_double_blocks_0_img_attn_proj.hada_t2": t.zeros(2, 2, 3, 3)},
    lambda t: {"lycoris_transformer_blocks_0_attn_to_q.lokr_w1": t.zeros(4, 4),
               "lycoris_transformer_blocks_0_attn_to_q.lokr_w2": t.zeros(8, 8),
               "lycoris_transformer_blocks_0_attn_to_q.dora_scale": t.ones(1, 32)},
    lambda t: {"lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_down.weight": t.zeros(4, 32),
               "lora_te2_encoder_block_0_layer_0_SelfAttention_q.lora_up.weight": t.zeros(32, 4)},
    lambda t: {"diffusion_model.double_blocks.0.img_attn.proj.oft_blocks": t.zeros(4, 8, 8)},
], ids=["tucker_loha", "lycoris_dora_scale", "t5_layers", "oft"])
def test_what_cannot_be_applied_exactly_is_refused_by_name_in_both_strategies(each_engine, tmp_path, make):
    import torch
    from safetensors.torch import save_file

    tensors = make(torch)
    save_file(tensors, str(tmp_path / "odd.safetensors"))
    with pytest.raises(AdapterMismatch) as caught:
        each_engine.generate(request(lora_path=str(tmp_path / "odd.safetensors")))
    layer = next(iter(tensors)).split(".")[0]
    assert "odd.safetensors" in caught.value.message
    assert layer.split("_")[0] in caught.value.message or "dora_scale" in caught.value.message


def test_inspect_names_format_tool_kinds_and_effective_scale(files, settings):
    from pipelines.lora.inspect import inspect_lora

    lokr = inspect_lora(str(files["lycoris_lokr"]), settings)
    assert lokr["format"] == "lycoris" and "SimpleTuner" in lokr["tool"] and lokr["kinds"] == {"LoKr": 8}
    assert lokr["effective_scale_at_strength_1"] == {"all": 1.5}  # alpha 3 / rank 2
    assert lokr["fits_configured_model"] is True and lokr["unplaced"] == []
    simpletuner = inspect_lora(str(files["lycoris_lokr_simpletuner_default"]), settings)
    assert simpletuner["effective_scale_at_strength_1"] == {"all": 1.0}  # both factors full: alpha 10000 unused
    comfy = inspect_lora(str(files["comfyui_extracted"]), settings)
    assert comfy["format"] == "comfyui" and "ComfyUI" in comfy["tool"] and comfy["kinds"] == {"LoRA": 8, "bias": 9}
    kohya = inspect_lora(str(files["onetrainer_kohya"]), settings)
    assert kohya["tool"].startswith("OneTrainer KOHYA") and kohya["alpha"] == 2.0
    assert kohya["effective_scale_at_strength_1"] == {"all": 0.5}  # alpha 2 / rank 4


def test_inspect_names_each_layer_it_could_not_place(settings, tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipelines.lora.inspect import inspect_lora

    save_file({"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": torch.zeros(32, 4),
               "lora_unet_double_blocks_0_img_attn_norm.lora_down.weight": torch.zeros(4, 32),
               "lora_unet_double_blocks_0_img_attn_norm.lora_up.weight": torch.zeros(32, 4)},
              str(tmp_path / "partly.safetensors"))
    report = inspect_lora(str(tmp_path / "partly.safetensors"), settings)
    assert report["unplaced"] == ["lora_unet_double_blocks_0_img_attn_norm"]
    assert report["fits_configured_model"] is False and "img_attn_norm" in report["fit_detail"]


def test_fused_restores_every_weight_and_bias_bit_for_bit_after_the_wild_files(engine, files, bare_pipe):
    """After LoKr, LoHa, diff, diff_b and DoRA layers were merged and switched, the base model comes back exactly:
    every parameter of the transformer and the CLIP text encoder equals the untouched pipeline's."""
    import torch

    for layout in ("lycoris_kohya_lokr", "comfyui_extracted", "onetrainer_kohya"):
        engine.adapters.activate_set([(engine.loras.adapter_for(files[layout]).name, 0.7)])
    engine.adapters.activate_set([])
    for component in ("transformer", "text_encoder"):
        reference = dict(getattr(bare_pipe, component).named_parameters())
        for name, param in getattr(engine.pipe, component).named_parameters():
            assert torch.equal(param, reference[name]), f"{component}.{name} differs after switching back"
