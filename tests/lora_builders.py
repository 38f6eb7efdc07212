"""LoRA files as real trainers write them, made on the demo model with the libraries' own writers.

Why the libraries' writers and not hand-made tensors: the bugs users hit come from what PEFT's
``save_pretrained`` and diffusers' ``save_lora_weights`` really put in a file (key names, DoRA magnitude keys,
``adapter_config.json`` fields, text-encoder prefixes). Only kohya files are built by hand, from diffusers
naming, because sd-scripts is not a library we can import. Every builder works on fresh copies of the demo
components, so the engine under test is never touched.
"""

from __future__ import annotations

from pathlib import Path

#: transformer modules the test LoRAs adapt (attention, feed-forward with its digit-bearing names)
TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_out"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def _fresh(component: str, demo_model: Path):
    import torch

    if component == "transformer":
        from diffusers import FluxTransformer2DModel as cls
    else:
        from transformers import CLIPTextModel as cls
    return cls.from_pretrained(str(demo_model / component), torch_dtype=torch.float32)


def _randomize_lora_b(model, seed: int) -> None:
    """Trainers start B at zero; a LoRA that changes nothing cannot show a bug, so give B values."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            if ".lora_B." in name or ".lora_magnitude_vector." in name:
                noise = torch.randn(param.shape, generator=gen)
                if ".lora_B." in name:
                    param.copy_(noise * 0.5)
                else:  # DoRA: move the magnitude away from its initial ||W|| so DoRA visibly matters
                    param.mul_(1.0 + 0.1 * noise)


def peft_lora(demo_model: Path, folder: Path, *, seed: int = 11, **config) -> Path:
    """``get_peft_model(transformer, LoraConfig(...)).save_pretrained(folder)`` (PEFT's own writer)."""
    import peft

    settings = dict(r=4, lora_alpha=8, target_modules=TRANSFORMER_TARGETS, init_lora_weights=True)
    settings.update(config)
    model = peft.get_peft_model(_fresh("transformer", demo_model), peft.LoraConfig(**settings))
    _randomize_lora_b(model, seed)
    model.save_pretrained(str(folder))
    return folder


def diffusers_lora_with_text_encoder(demo_model: Path, folder: Path, *, seed: int = 21, rank: int = 4,
                                     alpha: int = 8) -> Path:
    """What ``train_dreambooth_lora_flux.py --train_text_encoder`` saves: ``add_adapter`` on the transformer
    and the CLIP text encoder, then ``FluxPipeline.save_lora_weights`` with both layer sets and their metadata."""
    import peft
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict

    transformer, text_encoder = _fresh("transformer", demo_model), _fresh("text_encoder", demo_model)
    transformer.add_adapter(peft.LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                            target_modules=TRANSFORMER_TARGETS))
    text_encoder.add_adapter(peft.LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                             target_modules=TEXT_ENCODER_TARGETS))
    _randomize_lora_b(transformer, seed)
    _randomize_lora_b(text_encoder, seed + 1)
    meta = {"r": rank, "lora_alpha": alpha, "init_lora_weights": "gaussian"}
    FluxPipeline.save_lora_weights(
        str(folder),
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        text_encoder_lora_layers=get_peft_model_state_dict(text_encoder),
        transformer_lora_adapter_metadata={**meta, "target_modules": TRANSFORMER_TARGETS},
        text_encoder_lora_adapter_metadata={**meta, "target_modules": TEXT_ENCODER_TARGETS},
    )
    return folder / "pytorch_lora_weights.safetensors"


def kohya_flux_lora(demo_model: Path, path: Path, *, seed: int = 31, rank: int = 4, alpha: float = 8.0,
                    text_encoder: bool = True, metadata: dict | None = None) -> Path:
    """A kohya sd-scripts FLUX LoRA (``lora_unet_double_blocks_*``/``single_blocks_*``, ``lora_te1_*`` for CLIP,
    ``.alpha`` tensors), named by hand from diffusers naming the way sd-scripts names the same layers."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    transformer = _fresh("transformer", demo_model)
    modules = dict(transformer.named_modules())
    unet = {
        "lora_unet_double_blocks_0_img_attn_proj": "transformer_blocks.0.attn.to_out.0",
        "lora_unet_double_blocks_0_img_mlp_0": "transformer_blocks.0.ff.net.0.proj",
        "lora_unet_double_blocks_0_txt_attn_proj": "transformer_blocks.0.attn.to_add_out",
        "lora_unet_single_blocks_0_linear2": "single_transformer_blocks.0.proj_out",
    }
    shapes = {k: (modules[v].in_features, modules[v].out_features) for k, v in unet.items()}
    qkv = modules["transformer_blocks.0.attn.to_q"]
    shapes["lora_unet_double_blocks_0_img_attn_qkv"] = (qkv.in_features, 3 * qkv.out_features)
    if text_encoder:
        te = dict(_fresh("text_encoder", demo_model).named_modules())
        for name in ("q_proj", "v_proj", "out_proj"):
            layer = te[f"encoder.layers.0.self_attn.{name}"]
            shapes[f"lora_te1_text_model_encoder_layers_0_self_attn_{name}"] = (layer.in_features, layer.out_features)
    tensors = {}
    for key, (in_f, out_f) in shapes.items():
        tensors[f"{key}.lora_down.weight"] = (torch.randn(rank, in_f, generator=gen) * in_f**-0.5).contiguous()
        tensors[f"{key}.lora_up.weight"] = (torch.randn(out_f, rank, generator=gen) * 0.5).contiguous()
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path), metadata=metadata)
    return path
