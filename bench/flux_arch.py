"""FLUX.1-dev's architecture, built from its configuration with random (or no) weights: the bench scripts' model.

Why here and not a download: the cost of a denoising step and the bytes a part occupies depend on shapes, not
on weight values, and nothing may be downloaded. ``build_pipeline(FULL, "cuda", bf16)`` builds the full-size
pipeline directly on the GPU (no float32 copy of 12 B parameters on the host); on ``"meta"`` it builds the same
modules with no storage at all (bench/flux_memory.py counts their bytes on any machine). ``TINY`` is the demo-
sized architecture the ``--tiny`` CI runs use.

LoRA target sets (``targets()``): which linear layers a LoRA adapts decides how big the fused strategy's backup
is (one copy of every touched weight):

- ``attn``: the attention projections of both streams (8 per double block, q/k/v of each single block);
- ``attn+ff``: those plus both feed-forward networks of the double blocks: the usual FLUX LoRA (342 weights);
- ``trainer``: what ``flux-service train`` adapts (training/config.py ``TARGET_MODULES``, the same matching rule
  as training/loop.py): attn+ff plus ``proj_mlp``/``proj_out`` of the single blocks.
"""

from __future__ import annotations

import re
from pathlib import Path

#: FLUX LoRA trainers' usual targets: 12 per double block + 3 per single block = 342 weights on FLUX.1-dev
ATTN_FF = re.compile(r"^(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|"
                     r"to_add_out)|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))|"
                     r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v))$")
ATTN = re.compile(r"^(transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|"
                  r"to_add_out)|single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v))$")
TARGET_SETS = ("attn", "attn+ff", "trainer")

FULL = dict(
    transformer=dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                     num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                     guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
    t5=dict(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, relative_attention_num_buckets=32,
            feed_forward_proj="gated-gelu", vocab_size=32128),
    clip=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu", vocab_size=49408),
    vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
)
TINY = dict(
    transformer=dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=2, attention_head_dim=16,
                     num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                     axes_dims_rope=(4, 4, 8)),
    t5=dict(d_model=32, d_kv=8, d_ff=37, num_layers=1, num_heads=4, relative_attention_num_buckets=8,
            feed_forward_proj="relu", vocab_size=None),
    clip=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, projection_dim=32,
              hidden_act="quick_gelu", vocab_size=None),
    vae=dict(block_out_channels=(8, 8, 8, 8), layers_per_block=1, norm_num_groups=4),
)


def build_components(cfg: dict, device: str, dtype, *, clip_tokens: dict | None = None) -> dict:
    """transformer, text_encoder_2 (T5), text_encoder (CLIP) and vae, created directly on ``device`` in ``dtype``
    (``"meta"``: shapes only, no memory). ``clip_tokens``: bos/eos/pad ids of the CLIP tokenizer when known."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are born in bf16: no fp32 copy of 12 B parameters
    try:
        with torch.device(device):
            torch.manual_seed(0)
            transformer = FluxTransformer2DModel(**cfg["transformer"])
            text_encoder_2 = T5EncoderModel(T5Config(is_encoder_decoder=False, use_cache=False, **cfg["t5"]))
            text_encoder = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, **(clip_tokens or {}),
                                                        **cfg["clip"]))
            vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, scaling_factor=0.3611,
                                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, **cfg["vae"])
    finally:
        torch.set_default_dtype(previous)
    return {"transformer": transformer, "text_encoder_2": text_encoder_2, "text_encoder": text_encoder, "vae": vae}


def build_pipeline(cfg: dict, device: str, dtype):
    """A diffusers FluxPipeline with random weights, created directly on ``device`` in ``dtype``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    from pipelines.demo_model import clip_tokenizer, t5_tokenizer  # our offline tokenizers (no download)

    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    cfg = {**cfg, "t5": dict(cfg["t5"]), "clip": dict(cfg["clip"])}
    cfg["t5"]["vocab_size"] = cfg["t5"]["vocab_size"] or len(t5_tok.get_vocab())
    cfg["clip"]["vocab_size"] = cfg["clip"]["vocab_size"] or len(clip_tok.get_vocab())
    parts = build_components(cfg, device, dtype, clip_tokens=dict(
        bos_token_id=clip_tok.bos_token_id, eos_token_id=clip_tok.eos_token_id, pad_token_id=clip_tok.pad_token_id))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, tokenizer=clip_tok, tokenizer_2=t5_tok, **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def targets(transformer, which: str) -> list[str]:
    """Names of the linear layers of ``transformer`` that a LoRA of target set ``which`` adapts."""
    import torch

    linears = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    if which == "attn":
        return [n for n in linears if ATTN.match(n)]
    if which == "attn+ff":
        return [n for n in linears if ATTN_FF.match(n)]
    if which == "trainer":
        from training.config import TARGET_MODULES

        return [n for n in linears if any(n == t or n.endswith("." + t) for t in TARGET_MODULES)]
    raise ValueError(f"target set must be one of {', '.join(TARGET_SETS)}, got {which!r}")


def random_lora(transformer, rank: int, seed: int, which: str = "attn+ff"):
    """A LoRA in diffusers naming on the ``which`` targets, in the model's dtype, on the CPU as a file would be
    read (on a meta-device model: meta tensors, shapes only)."""
    import torch

    from pipelines.lora.weights import LoraWeights

    meta = next(transformer.parameters()).device.type == "meta"
    gen = torch.Generator().manual_seed(seed)
    modules = dict(transformer.named_modules())
    sd = {}
    for name in targets(transformer, which):
        module = modules[name]
        dtype = module.weight.dtype
        if meta:
            sd[f"transformer.{name}.lora_A.weight"] = torch.empty(rank, module.in_features, dtype=dtype, device="meta")
            sd[f"transformer.{name}.lora_B.weight"] = torch.empty(module.out_features, rank, dtype=dtype, device="meta")
            continue
        sd[f"transformer.{name}.lora_A.weight"] = (torch.randn(rank, module.in_features, generator=gen)
                                                   / module.in_features ** 0.5).to(dtype)
        sd[f"transformer.{name}.lora_B.weight"] = (torch.randn(module.out_features, rank, generator=gen)
                                                   * 0.01).to(dtype)
    return LoraWeights(path=Path(f"<random rank-{rank} {which} LoRA {seed}>"), format="diffusers", state_dict=sd)
