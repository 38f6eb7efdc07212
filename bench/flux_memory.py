"""Resident memory of FLUX.1-dev's parts, counted from the architecture on the ``meta`` device (no weights).

Why: the README's memory figures were guesses ("about 34 GB", "an 80 GB card holds serving + training"). Here
every figure is bytes = parameters x bytes per element of modules built from FLUX.1-dev's configuration
(bench/flux_arch.py ``FULL``) on ``torch.device("meta")``: nothing is allocated or downloaded, it runs in a
second on any machine, and the README/docs figures come from its output.

    python bench/flux_memory.py                  # bf16, rank 16, every target set, 1024x1024
    python bench/flux_memory.py --rank 32 --targets trainer --json

What it prints:

- transformer, T5-XXL encoder, CLIP-L, VAE: their parameters and buffers;
- the bytes one fused task switch moves (read + written, counted by running the fused strategy's own code on
  the meta weights, bench/traffic.py), and what the former float32 round trip moved;
- the fused strategy's backup for one LoRA (FLUX_ADAPTERS=fused): one copy of every weight the LoRA touches,
  for each target set (bench/flux_arch.py: attention only, attention + feed-forward, our trainer's
  TARGET_MODULES), plus the LoRA's own factors as the fused strategy keeps them (the weights' dtype);
- the trainer (``flux-service train``, which encodes the photos and captions first, frees T5 and CLIP, then
  moves the transformer to the GPU): its phase peaks, and what it needs beside the model: the LoRA's
  parameters, gradients and AdamW moments in float32 (16 bytes per LoRA parameter) and the inputs of each
  gradient-checkpointed block at the training size. Not counted: the activations of the one block being
  recomputed in the backward pass, the CUDA context and allocator slack (they depend on the attention kernel
  and the GPU; bench/gpu_check.sh measures the real peak).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

GIB = 2**30


def _bytes(module) -> tuple[int, int]:
    """(parameters, bytes of parameters and buffers)."""
    params = sum(p.numel() for p in module.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in module.parameters())
    nbytes += sum(b.numel() * b.element_size() for b in module.buffers())
    return params, nbytes


def backup_figures(transformer, which: str, rank: int) -> dict:
    """What the fused strategy holds for one LoRA on target set ``which``: the backup (one copy of each touched
    weight, in the weight's dtype) and the LoRA factors (rank x (in + out) per weight, same dtype)."""
    from bench.flux_arch import targets

    modules = dict(transformer.named_modules())
    names = targets(transformer, which)
    weights = [modules[n].weight for n in names]
    backup = sum(w.numel() * w.element_size() for w in weights)
    factors = sum(rank * (w.shape[0] + w.shape[1]) * w.element_size() for w in weights)
    lora_params = sum(rank * (w.shape[0] + w.shape[1]) for w in weights)
    return {"targets": which, "weights": len(names), "touched_params": sum(w.numel() for w in weights),
            "backup_bytes": backup, "factor_bytes": factors, "lora_params": lora_params}


def switch_traffic(transformer, which: str, rank: int) -> dict:
    """Bytes one task switch (LoRA one -> LoRA two, same targets) moves, counted with bench/traffic.py on the meta
    device: the fused strategy's own code (pipelines/lora/fused_adapters.py), and the former arithmetic (backup
    to float32, add ``B @ A``, cast back) on the same weights for comparison."""
    import torch

    from bench.flux_arch import random_lora
    from bench.traffic import Traffic
    from pipelines.lora.fused_adapters import FusedAdapters

    class _Holder:  # what FusedAdapters reads from a pipeline
        pass

    holder = _Holder()
    holder.transformer = transformer
    adapters = FusedAdapters(holder)
    for name, seed in (("one", 1), ("two", 2)):
        adapters.load(name, random_lora(transformer, rank, seed, which))
    adapters.activate_set([("one", 0.7)])
    with Traffic() as now:
        adapters.activate_set([("two", 0.7)])
    with Traffic() as former, torch.no_grad():
        for d in adapters._deltas["one"]:  # the same weights, the former arithmetic
            weight = adapters._weights[d.slot]
            merged = adapters._backup[d.slot].to(dtype=torch.float32, copy=True)
            merged.addmm_(d.recipe.up.float(), d.recipe.down.float(), alpha=0.7 * d.recipe.scale)
            weight.copy_(merged)
    adapters.activate_set([])
    params = sum(adapters._weights[d.slot].numel() for d in adapters._deltas["two"])
    return {"targets": which, "rank": rank, "params": params, "bytes": now.total,
            "float32_bytes": now.by_dtype.get("float32", 0), "former_bytes": former.total,
            "former_float32_bytes": former.by_dtype.get("float32", 0)}


def checkpoint_input_bytes(transformer, size: int, text_tokens: int, element_size: int) -> int:
    """Bytes the gradient-checkpointed transformer keeps between forward and backward: each block's inputs
    (image-token and text-token hidden states, batch 1) at ``size`` x ``size``."""
    cfg = transformer.config
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    image_tokens = (size // 16) ** 2  # VAE /8, then 2x2 patches
    blocks = cfg.num_layers + cfg.num_single_layers
    return blocks * (image_tokens + text_tokens) * inner * element_size


def measure(rank: int = 16, which: list[str] | None = None, size: int = 1024, dtype_name: str = "bfloat16",
            text_tokens: int = 512) -> dict:
    import torch

    from bench.flux_arch import FULL, TARGET_SETS, build_components

    dtype = getattr(torch, dtype_name)
    parts = build_components(FULL, "meta", dtype)
    out: dict = {"dtype": dtype_name, "rank": rank, "size": size, "text_tokens": text_tokens, "parts": {}}
    for name, label in (("transformer", "transformer"), ("text_encoder_2", "T5-XXL encoder"),
                        ("text_encoder", "CLIP-L text encoder"), ("vae", "VAE")):
        params, nbytes = _bytes(parts[name])
        out["parts"][name] = {"label": label, "params": params, "bytes": nbytes}
    p = out["parts"]
    out["serving_bytes"] = sum(v["bytes"] for v in p.values())
    out["backup"] = [backup_figures(parts["transformer"], w, rank) for w in (which or TARGET_SETS)]
    out["switch"] = switch_traffic(parts["transformer"], "attn+ff", rank)
    lora = backup_figures(parts["transformer"], "trainer", rank)
    element = torch.empty((), dtype=dtype).element_size()
    trainer = {
        "lora_params": lora["lora_params"],
        "lora_state_bytes": lora["lora_params"] * 16,  # fp32 weights + grads + AdamW exp_avg + exp_avg_sq
        "checkpoint_bytes": checkpoint_input_bytes(parts["transformer"], size, text_tokens, element),
    }
    trainer["encode_phase_bytes"] = p["text_encoder_2"]["bytes"] + p["text_encoder"]["bytes"] + p["vae"]["bytes"]
    trainer["train_phase_bytes"] = (p["transformer"]["bytes"] + p["vae"]["bytes"] + trainer["lora_state_bytes"]
                                    + trainer["checkpoint_bytes"])
    trainer["all_at_once_bytes"] = out["serving_bytes"] + trainer["lora_state_bytes"] + trainer["checkpoint_bytes"]
    out["trainer"] = trainer
    return out


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def render(m: dict) -> str:
    p, t = m["parts"], m["trainer"]
    lines = [f"FLUX.1-dev architecture on the meta device (no weights), {m['dtype']}; LoRA rank {m['rank']}; "
             f"training size {m['size']}x{m['size']} with {m['text_tokens']} text tokens, batch 1.", "",
             "| part | parameters | GiB | GB |", "|---|---:|---:|---:|"]
    for v in p.values():
        lines.append(f"| {v['label']} | {v['params'] / 1e9:.3f} B | {_gib(v['bytes'])} | {v['bytes'] / 1e9:.2f} |")
    lines.append(f"| **serving, everything resident** | | **{_gib(m['serving_bytes'])}** | "
                 f"{m['serving_bytes'] / 1e9:.2f} |")
    lines += ["", "| fused backup for one LoRA: targets | weights | backup GiB | LoRA factors GiB (per LoRA) |",
              "|---|---:|---:|---:|"]
    for b in m["backup"]:
        lines.append(f"| {b['targets']} | {b['weights']} | {_gib(b['backup_bytes'])} | {_gib(b['factor_bytes'])} |")
    sw = m["switch"]
    lines += ["", f"One task switch between two rank-{sw['rank']} {sw['targets']} LoRAs ({sw['params'] / 1e9:.2f} B "
              f"parameters rewritten), bytes read + written, counted (bench/traffic.py): in the weights' dtype "
              f"(copy in + addmm_) {sw['bytes'] / 1e9:.1f} GB ({sw['bytes'] / sw['params']:.1f} bytes/parameter, "
              f"float32 traffic {sw['float32_bytes'] / 1e9:.1f} GB); the former float32 round trip "
              f"{sw['former_bytes'] / 1e9:.1f} GB ({sw['former_bytes'] / sw['params']:.1f} bytes/parameter, float32 traffic "
              f"{sw['former_float32_bytes'] / 1e9:.1f} GB)."]
    lines += ["", "| trainer (flux-service train, LoRA on TARGET_MODULES) | GiB |", "|---|---:|",
              f"| LoRA parameters ({t['lora_params'] / 1e6:.1f} M) + gradients + AdamW moments, float32 | "
              f"{_gib(t['lora_state_bytes'])} |",
              f"| gradient-checkpointed block inputs at {m['size']}x{m['size']} | {_gib(t['checkpoint_bytes'])} |",
              f"| phase 1, encode (T5 + CLIP + VAE on the GPU) | {_gib(t['encode_phase_bytes'])} |",
              f"| phase 2, train (transformer + VAE + LoRA state + checkpoints) | {_gib(t['train_phase_bytes'])} |",
              f"| everything on the GPU at once (the order before issue 18) | {_gib(t['all_at_once_bytes'])} |",
              "", "Not counted: activations of the block being recomputed in the backward pass, inference "
              "activations, the CUDA context and allocator slack (measure them on a GPU: bench/gpu_check.sh)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from bench.flux_arch import TARGET_SETS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--targets", default=",".join(TARGET_SETS),
                   help=f"comma-separated target sets for the fused backup ({', '.join(TARGET_SETS)}; default all)")
    p.add_argument("--size", type=int, default=1024, help="training image size for the checkpoint figure")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--json", action="store_true", help="print the figures as JSON (bytes) instead of tables")
    args = p.parse_args(argv)
    which = [w.strip() for w in args.targets.split(",") if w.strip()]
    bad = [w for w in which if w not in TARGET_SETS]
    if bad:
        p.error(f"--targets: unknown target set {bad[0]!r}; choose from {', '.join(TARGET_SETS)}")
    m = measure(args.rank, which, args.size, args.dtype)
    print(json.dumps(m, indent=2) if args.json else render(m))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
