"""LoRA files as kohya sd-scripts, LyCORIS (SimpleTuner, lycoris.kohya), ComfyUI and OneTrainer write them for FLUX.

Each writer follows its tool's public save code (key names, which tensors, dtype, how ``alpha`` is stored, how a
fused BFL layer is laid out), on the demo model's shapes, with random trained-looking values. None of these
tools is a library we can import, so the writers are ours; the matching *readers* are in
tests/lora_wild_reference.py (written separately from the service's own loader, pipelines/lora/).
"""

from __future__ import annotations

import json
from pathlib import Path

#: BFL layer -> the diffusers modules it covers (in row order); the demo model has one double and one single block
BFL_LAYERS = {
    "double_blocks.0.img_attn.qkv": ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k",
                                     "transformer_blocks.0.attn.to_v"),
    "double_blocks.0.txt_attn.qkv": ("transformer_blocks.0.attn.add_q_proj", "transformer_blocks.0.attn.add_k_proj",
                                     "transformer_blocks.0.attn.add_v_proj"),
    "double_blocks.0.img_attn.proj": ("transformer_blocks.0.attn.to_out.0",),
    "double_blocks.0.txt_attn.proj": ("transformer_blocks.0.attn.to_add_out",),
    "double_blocks.0.img_mlp.0": ("transformer_blocks.0.ff.net.0.proj",),
    "double_blocks.0.txt_mlp.2": ("transformer_blocks.0.ff_context.net.2",),
    "double_blocks.0.img_mod.lin": ("transformer_blocks.0.norm1.linear",),
    "double_blocks.0.txt_mod.lin": ("transformer_blocks.0.norm1_context.linear",),
    "single_blocks.0.linear1": ("single_transformer_blocks.0.attn.to_q", "single_transformer_blocks.0.attn.to_k",
                                "single_transformer_blocks.0.attn.to_v", "single_transformer_blocks.0.proj_mlp"),
    "single_blocks.0.linear2": ("single_transformer_blocks.0.proj_out",),
    "single_blocks.0.modulation.lin": ("single_transformer_blocks.0.norm.linear",),
    "img_in": ("x_embedder",),
    "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),  # BFL (shift, scale) = diffusers (scale, shift)
}
#: the BFL layers every tool's file below adapts (attention, MLP, modulation, both block kinds, final layer)
CORE = ("double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "double_blocks.0.txt_mlp.2",
        "double_blocks.0.img_mod.lin", "single_blocks.0.linear1", "single_blocks.0.linear2",
        "final_layer.adaLN_modulation.1")
EMBEDDERS = ("img_in", "txt_in", "time_in.in_layer", "time_in.out_layer", "vector_in.in_layer",
             "vector_in.out_layer", "guidance_in.in_layer", "guidance_in.out_layer", "final_layer.linear")
#: diffusers modules for the files keyed by diffusers names (LyCORIS under SimpleTuner, OneTrainer LEGACY)
DIFFUSERS_TARGETS = ("transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.add_k_proj",
                     "transformer_blocks.0.attn.to_out.0", "transformer_blocks.0.ff.net.0.proj",
                     "transformer_blocks.0.ff_context.net.2", "single_transformer_blocks.0.attn.to_k",
                     "single_transformer_blocks.0.proj_mlp", "single_transformer_blocks.0.proj_out")
CLIP_LAYERS = ("encoder.layers.0.self_attn.q_proj", "encoder.layers.0.self_attn.v_proj")


class _Model:
    """Shapes of the demo model's layers: (out, in) of each diffusers module and of each BFL layer."""

    def __init__(self, demo_model: Path):
        import torch
        from diffusers import FluxTransformer2DModel
        from transformers import CLIPTextModel

        kw = dict(torch_dtype=torch.float32)
        self.transformer = FluxTransformer2DModel.from_pretrained(str(demo_model / "transformer"), **kw)
        self.text_encoder = CLIPTextModel.from_pretrained(str(demo_model / "text_encoder"), **kw)
        self.linear = {n: (m.out_features, m.in_features) for n, m in self.transformer.named_modules()
                       if isinstance(m, torch.nn.Linear)}
        self.clip = {n: (m.out_features, m.in_features) for n, m in self.text_encoder.named_modules()
                     if isinstance(m, torch.nn.Linear)}

    def bfl(self, layer: str) -> tuple[int, int]:
        modules = BFL_LAYERS[layer]
        return sum(self.linear[m][0] for m in modules), self.linear[modules[0]][1]


def _rand(gen, *shape, std=1.0):
    import torch

    return (torch.randn(*shape, generator=gen) * std).contiguous()


def _factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS' split of a layer width into two factors (``factor`` > 0 divides it: (factor, dim/factor);
    else the two divisors closest to the square root, smaller first, the first not above ``factor``)."""
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    limit = dim if factor == -1 else factor
    best = (1, dim)
    for m in range(2, dim + 1):
        if dim % m:
            continue
        n = dim // m
        if m > n or m > limit or m + n > sum(best):
            break
        best = (m, n)
    return best


def _save(tensors: dict, path: Path, metadata: dict | None = None) -> Path:
    from safetensors.torch import save_file

    save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


# ---------------------------------------------------------------- LyCORIS (lycoris/modules/lokr.py, loha.py)
def _lokr_layer(gen, out_dim, in_dim, *, rank, alpha, factor, decompose_both, full_matrix):
    """One LyCORIS LoKr layer's tensors, with LyCORIS' rules for which factor is stored low-rank."""
    import torch

    (a, b), (c, d) = _factorization(out_dim, factor), _factorization(in_dim, factor)
    out = {}
    if decompose_both and rank < max(a, c) / 2 and not full_matrix:
        out.update(lokr_w1_a=_rand(gen, a, rank, std=0.7), lokr_w1_b=_rand(gen, rank, c, std=0.7))
    else:
        out["lokr_w1"] = _rand(gen, a, c, std=0.7)
    if rank < max(b, d) / 2 and not full_matrix:
        out.update(lokr_w2_a=_rand(gen, b, rank, std=0.5), lokr_w2_b=_rand(gen, rank, d, std=d ** -0.5))
    else:
        out["lokr_w2"] = _rand(gen, b, d, std=0.3)
    # both factors full: LyCORIS trains at scale 1 and stores alpha = its lora_dim
    out["alpha"] = torch.tensor(float(rank if "lokr_w1" in out and "lokr_w2" in out else alpha))
    return out


def _loha_layer(gen, out_dim, in_dim, *, rank, alpha):
    import torch

    return {"hada_w1_a": _rand(gen, out_dim, rank, std=0.5), "hada_w1_b": _rand(gen, rank, in_dim, std=0.5),
            "hada_w2_a": _rand(gen, out_dim, rank, std=0.5), "hada_w2_b": _rand(gen, rank, in_dim, std=in_dim ** -0.5),
            "alpha": torch.tensor(float(alpha))}


def lycoris_simpletuner(demo_model: Path, path: Path, *, algo: str = "lokr", seed: int = 41, rank: int = 2,
                        alpha: float = 3.0, factor: int = -1, decompose_both: bool = True,
                        full_matrix: bool = False) -> Path:
    """SimpleTuner's LyCORIS file: ``lycoris_`` + the diffusers module path with ``_``, ``.lokr_*``/``.hada_*`` and
    ``.alpha`` per layer (SimpleTuner's default LoKr preset: factor 16, full matrices)."""
    import torch

    gen, model = torch.Generator().manual_seed(seed), _Model(demo_model)
    tensors = {}
    for module in DIFFUSERS_TARGETS:
        out_dim, in_dim = model.linear[module]
        layer = (_lokr_layer(gen, out_dim, in_dim, rank=rank, alpha=alpha, factor=factor,
                             decompose_both=decompose_both, full_matrix=full_matrix)
                 if algo == "lokr" else _loha_layer(gen, out_dim, in_dim, rank=rank, alpha=alpha))
        tensors.update({f"lycoris_{module.replace('.', '_')}.{k}": v for k, v in layer.items()})
    return _save(tensors, path, {"lycoris_config": json.dumps({"algo": algo, "factor": factor})})


def lycoris_kohya(demo_model: Path, path: Path, *, algo: str = "lokr", seed: int = 43, rank: int = 2,
                  alpha: float = 4.0) -> Path:
    """sd-scripts with ``--network_module lycoris.kohya``: LyCORIS layers on sd-scripts' BFL FLUX model, so the
    names are ``lora_unet_`` + the BFL path with ``_`` and the fused qkv / linear1 are one layer each."""
    import torch

    gen, model = torch.Generator().manual_seed(seed), _Model(demo_model)
    tensors = {}
    for layer in CORE + ("double_blocks.0.txt_attn.qkv",):
        out_dim, in_dim = model.bfl(layer)
        parts = (_lokr_layer(gen, out_dim, in_dim, rank=rank, alpha=alpha, factor=-1, decompose_both=False,
                             full_matrix=False)
                 if algo == "lokr" else _loha_layer(gen, out_dim, in_dim, rank=rank, alpha=alpha))
        tensors.update({f"lora_unet_{layer.replace('.', '_')}.{k}": v for k, v in parts.items()})
    header = {"ss_network_module": "lycoris.kohya", "ss_network_args": json.dumps({"algo": algo}),
              "ss_network_dim": str(rank), "ss_network_alpha": str(alpha)}
    return _save(tensors, path, header)


# ---------------------------------------------------------------- ComfyUI (comfy_extras/nodes_lora_extract.py)
def comfyui_extracted(demo_model: Path, path: Path, *, seed: int = 51, rank: int = 4, full_diff: bool = False) -> Path:
    """ComfyUI's "Extract and Save Lora" on a FLUX model difference: ``diffusion_model.`` + the BFL path; a truncated
    SVD of each weight difference as ``lora_up`` (U*S) / ``lora_down`` (Vh), no alpha, or the whole difference as
    ``diff`` with lora_type full_diff; each bias difference as ``diff_b`` (bias_diff, on by default); float16."""
    import torch

    gen, model = torch.Generator().manual_seed(seed), _Model(demo_model)
    tensors = {}
    for layer in CORE + ("img_in",):
        out_dim, in_dim = model.bfl(layer)
        diff = _rand(gen, out_dim, rank, std=0.4) @ _rand(gen, rank, in_dim, std=in_dim ** -0.5)
        key = f"diffusion_model.{layer}"
        if full_diff:
            tensors[f"{key}.diff"] = diff.half()
        else:
            u, s, vh = torch.linalg.svd(diff)
            tensors[f"{key}.lora_up.weight"] = (u[:, :rank] * s[:rank]).half()
            tensors[f"{key}.lora_down.weight"] = vh[:rank].half()
        tensors[f"{key}.diff_b"] = _rand(gen, out_dim, std=0.05).half()
    out_dim, _ = model.bfl("double_blocks.0.txt_mod.lin")  # a layer whose bias alone changed
    tensors["diffusion_model.double_blocks.0.txt_mod.lin.diff_b"] = _rand(gen, out_dim, std=0.05).half()
    return _save(tensors, path)


# ---------------------------------------------------------------- OneTrainer (modelSaver/mixin/LoRASaverMixin.py)
def _ot_header() -> dict:
    return {"ot_branch": "master", "ot_revision": "0000000", "modelspec.architecture": "Flux.1-dev/lora"}


def _lora_pair(gen, out_dim, in_dim, rank):
    return _rand(gen, rank, in_dim, std=in_dim ** -0.5), _rand(gen, out_dim, rank, std=0.4)


def _swap(up):
    import torch

    half = up.shape[0] // 2
    return torch.cat([up[half:], up[:half]])


def onetrainer(demo_model: Path, path: Path, *, output: str, seed: int = 61, rank: int = 4, alpha: float = 2.0,
               dtype: str = "bfloat16") -> Path:
    """OneTrainer's FLUX LoRA outputs. COMFY: ``diffusion_model.`` + BFL path (fused qkv/linear1, the final
    modulation's halves swapped), ``lora_A``/``lora_B`` + ``alpha``; CLIP-L as ``text_encoders.clip_l.transformer.``.
    KOHYA: the same layers as ``lora_unet_`` + BFL path with ``_``, ``lora_down``/``lora_up``, including the
    embedders and final layer; CLIP-L as ``lora_te1_``. LEGACY: ``lora_transformer_`` + diffusers path with ``_``
    (q, k, v separate, no swap), ``lora_te1_`` for CLIP-L."""
    import torch

    gen, model = torch.Generator().manual_seed(seed), _Model(demo_model)
    cast = getattr(torch, dtype)
    tensors = {}
    alpha_t = torch.tensor(alpha).to(cast)
    if output == "legacy":
        for module in DIFFUSERS_TARGETS + ("norm_out.linear", "x_embedder"):
            down, up = _lora_pair(gen, *model.linear[module], rank)
            key = f"lora_transformer_{module.replace('.', '_')}"
            tensors.update({f"{key}.lora_down.weight": down.to(cast), f"{key}.lora_up.weight": up.to(cast),
                            f"{key}.alpha": alpha_t})
    else:
        layers = CORE + (EMBEDDERS if output == "kohya" else ("img_in", "txt_in"))
        for layer in layers:
            down, up = _lora_pair(gen, *model.bfl(layer), rank)
            if layer == "final_layer.adaLN_modulation.1":
                up = _swap(up)  # OneTrainer's chunk_swap: written in BFL's (shift, scale) order
            if output == "comfy":
                key, names = f"diffusion_model.{layer}", ("lora_A.weight", "lora_B.weight")
            else:
                key, names = f"lora_unet_{layer.replace('.', '_')}", ("lora_down.weight", "lora_up.weight")
            tensors.update({f"{key}.{names[0]}": down.to(cast), f"{key}.{names[1]}": up.to(cast),
                            f"{key}.alpha": alpha_t})
    for module in CLIP_LAYERS:
        out_dim, in_dim = model.clip[module]
        down, up = _lora_pair(gen, out_dim, in_dim, rank)
        if output == "comfy":
            key, names = f"text_encoders.clip_l.transformer.text_model.{module}", ("lora_A.weight", "lora_B.weight")
        else:
            key, names = f"lora_te1_text_model_{module.replace('.', '_')}", ("lora_down.weight", "lora_up.weight")
        tensors.update({f"{key}.{names[0]}": down.to(cast), f"{key}.{names[1]}": up.to(cast), f"{key}.alpha": alpha_t})
    return _save(tensors, path, _ot_header())


# ---------------------------------------------------------------- sd-scripts networks/convert_flux_lora.py
def kohya_converted_from_diffusers(demo_model: Path, path: Path, *, seed: int = 71, rank: int = 4,
                                   lora_alpha: float = 16.0) -> Path:
    """What sd-scripts' ``convert_flux_lora.py`` writes from a diffusers/ai-toolkit FLUX LoRA trained with
    ``lora_alpha != r``: q, k, v LoRAs fused into one ``qkv`` layer with a block-diagonal ``lora_up`` and
    ``alpha`` = the fused rank, every other ``alpha`` = rank (scale 1), and the source file's header kept, so its
    ``lora_adapter_metadata`` still says ``lora_alpha=16, r=4`` (scale 4)."""
    import torch

    gen, model = torch.Generator().manual_seed(seed), _Model(demo_model)
    tensors = {}
    for layer in ("double_blocks.0.img_attn.qkv", "double_blocks.0.img_attn.proj", "single_blocks.0.linear2"):
        modules = BFL_LAYERS[layer]
        pairs = [_lora_pair(gen, *model.linear[m], rank) for m in modules]
        key = f"lora_unet_{layer.replace('.', '_')}"
        down = torch.cat([d for d, _ in pairs])
        up = torch.zeros(sum(u.shape[0] for _, u in pairs), rank * len(pairs))
        row = 0
        for i, (_, u) in enumerate(pairs):
            up[row:row + u.shape[0], i * rank:(i + 1) * rank] = u
            row += u.shape[0]
        tensors.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                        f"{key}.alpha": torch.tensor(float(rank * len(pairs)))})
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": rank, "transformer.lora_alpha": lora_alpha,
                                                 "transformer.target_modules": ["to_q", "to_k", "to_v", "to_out.0",
                                                                                "proj_out"]}),
            "format": "pt"}
    return _save(tensors, path, meta)
