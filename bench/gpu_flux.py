"""The fast path on the full FLUX.1-dev architecture: PEFT eager vs fused eager vs fused + torch.compile.

Builds FLUX.1-dev's transformer (19 double + 38 single blocks, 11.9 B parameters), T5-XXL, CLIP-L and the FLUX
VAE with random weights directly on the GPU in bf16 (nothing is downloaded: the cost of a step does not depend
on the weight values), two rank-16 LoRAs on the usual attention + feed-forward targets (342 weights), and
reports per strategy, with a LoRA active:

- seconds per 1024x1024, 28-step image (text encoders and VAE included);
- ms per task switch (LoRA A -> LoRA B) and per strength change (A at 0.7 -> 0.8), synchronised;
- compilations after warm-up across 50 switches, each followed by a denoising step (compiled mode);
- peak GPU memory; compile warm-up cold (empty inductor cache) and again from the cache.

    python bench/gpu_flux.py                     # one H100: about 6-8 minutes; writes docs/benchmarks.md
    python bench/gpu_flux.py --tiny              # CPU, the demo-sized architecture: a smoke run (CI)

``--tiny`` uses the ``eager`` torch.compile backend (Dynamo traces and counts graphs as with inductor, without
a C++ toolchain); the GPU run uses inductor. fp8 (``FLUX_QUANTIZE=fp8``) is refused by this build, so its row
says so.
"""

from __future__ import annotations

import argparse
import gc
import re
import shlex
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PROMPT = "a portrait photo of a science host in a studio"
START, END = "<!-- gpu_flux:start -->", "<!-- gpu_flux:end -->"
#: FLUX LoRA trainers' usual targets: 12 per double block + 3 per single block = 342 weights on FLUX.1-dev
TARGETS = re.compile(r"^(transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|"
                     r"to_add_out)|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2))|"
                     r"single_transformer_blocks\.\d+\.attn\.(to_q|to_k|to_v))$")

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


def build_pipeline(cfg: dict, device: str, dtype):
    """A diffusers FluxPipeline with random weights, created directly on ``device`` in ``dtype``."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from pipelines.demo_model import _clip_tokenizer, _t5_tokenizer  # our offline tokenizers (no download)

    clip_tok, t5_tok = _clip_tokenizer(), _t5_tokenizer()
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # parameters are born in bf16: no fp32 copy of 12 B parameters
    try:
        with torch.device(device):
            torch.manual_seed(0)
            transformer = FluxTransformer2DModel(**cfg["transformer"])
            t5 = dict(cfg["t5"])
            t5["vocab_size"] = t5["vocab_size"] or len(t5_tok.get_vocab())
            text_encoder_2 = T5EncoderModel(T5Config(is_encoder_decoder=False, use_cache=False, **t5))
            clip = dict(cfg["clip"])
            clip["vocab_size"] = clip["vocab_size"] or len(clip_tok.get_vocab())
            text_encoder = CLIPTextModel(CLIPTextConfig(max_position_embeddings=77, bos_token_id=clip_tok.bos_token_id,
                                                        eos_token_id=clip_tok.eos_token_id,
                                                        pad_token_id=clip_tok.pad_token_id, **clip))
            vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                                up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=16, scaling_factor=0.3611,
                                shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False, **cfg["vae"])
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tok,
                        text_encoder_2=text_encoder_2, tokenizer_2=t5_tok, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def random_lora(transformer, rank: int, seed: int):
    """A LoRA in diffusers naming on the usual targets (kept on the CPU, as a file would be read)."""
    import torch

    from pipelines.lora.weights import LoraWeights

    gen = torch.Generator().manual_seed(seed)
    sd = {}
    for name, module in transformer.named_modules():
        if TARGETS.match(name) and isinstance(module, torch.nn.Linear):
            sd[f"transformer.{name}.lora_A.weight"] = (torch.randn(rank, module.in_features, generator=gen)
                                                       / module.in_features ** 0.5).to(module.weight.dtype)
            sd[f"transformer.{name}.lora_B.weight"] = (torch.randn(module.out_features, rank, generator=gen)
                                                       * 0.01).to(module.weight.dtype)
    return LoraWeights(path=Path(f"<random rank-{rank} LoRA {seed}>"), format="diffusers", state_dict=sd)


class Bench:
    def __init__(self, args, pipe, device: str) -> None:
        self.args, self.pipe, self.device = args, pipe, device

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def image(self, steps: int | None = None, output_type: str = "pil") -> float:
        import torch

        self.sync()
        started = time.perf_counter()
        self.pipe(prompt=PROMPT, width=self.args.size, height=self.args.size,
                  num_inference_steps=steps or self.args.steps, guidance_scale=3.5,
                  generator=torch.Generator("cpu").manual_seed(0), max_sequence_length=self.args.seq,
                  output_type=output_type)
        self.sync()
        return time.perf_counter() - started

    def per_change_ms(self, adapters, a: list, b: list, n: int) -> float:
        self.sync()
        started = time.perf_counter()
        for i in range(n):
            adapters.activate_set(a if i % 2 else b)
        self.sync()
        return (time.perf_counter() - started) / n * 1000

    def peak_gib(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.device.startswith("cuda") else None

    def reset_peak(self) -> None:
        import torch

        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def run_mode(bench: Bench, adapters, loras, label: str, counter=None) -> dict:
    for name, lora in loras.items():
        adapters.load(name, lora)
    a, b = [("A", 0.7)], [("B", 0.7)]
    adapters.activate_set(a)
    bench.reset_peak()
    bench.image(steps=2)  # warm-up (first-use allocations, cuBLAS heuristics)
    seconds = bench.image()
    switch_ms = bench.per_change_ms(adapters, a, b, bench.args.switch_reps)
    strength_ms = bench.per_change_ms(adapters, [("A", 0.7)], [("A", 0.8)], bench.args.switch_reps)
    compiled_after = None
    if counter is not None:
        before = counter.total
        for i in range(bench.args.switches):
            adapters.activate_set(a if i % 2 else [("B", 0.3 + 0.01 * i)])
            bench.image(steps=1, output_type="latent")
        compiled_after = counter.total - before
    adapters.activate_set(a)
    return {"mode": label, "s_per_image": seconds, "switch_ms": switch_ms, "strength_ms": strength_ms,
            "compilations_after_warmup": compiled_after, "peak_gib": bench.peak_gib()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, tiny architecture, few steps: a smoke run for CI")
    p.add_argument("--size", type=int, help="width = height (default 1024; --tiny 64)")
    p.add_argument("--steps", type=int, help="denoising steps per image (default 28; --tiny 2)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--switches", type=int, default=50, help="switches counted for recompilations (default 50)")
    p.add_argument("--switch-reps", dest="switch_reps", type=int, default=20, help="changes timed per figure")
    p.add_argument("--backend", help="torch.compile backend (default inductor; --tiny eager)")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--docs", help="write the table into this markdown file between the gpu_flux markers "
                                  "(default docs/benchmarks.md on a GPU; --tiny writes nothing unless given)")
    args = p.parse_args(argv)

    import torch

    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")  # two adapters, on purpose
    from pipelines.compile import CompileCounter, compile_transformer
    from pipelines.lora.fused_adapters import FusedAdapters
    from pipelines.lora.peft_adapters import PeftAdapters

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --tiny for the CPU smoke run")
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    args.size = args.size or (64 if args.tiny else 1024)
    args.steps = args.steps or (2 if args.tiny else 28)
    args.seq = 32 if args.tiny else 512
    backend = args.backend or ("eager" if args.tiny else "inductor")
    docs = args.docs or (None if args.tiny else "docs/benchmarks.md")

    started = time.perf_counter()
    pipe = build_pipeline(TINY if args.tiny else FULL, device, dtype)
    built_s = time.perf_counter() - started
    params = sum(x.numel() for x in pipe.transformer.parameters()) / 1e9
    loras = {"A": random_lora(pipe.transformer, args.rank, 1), "B": random_lora(pipe.transformer, args.rank, 2)}
    n_targets = len(loras["A"].state_dict) // 2
    bench = Bench(args, pipe, device)
    rows = []

    # 1. PEFT layers, eager (what FLUX_ADAPTERS=peft does)
    rows.append(run_mode(bench, PeftAdapters(pipe), loras, "peft, eager"))
    pipe.transformer.unload_lora()  # back to plain nn.Linear layers for the fused modes
    # 2. fused, eager
    fused = FusedAdapters(pipe, backup="auto")
    rows.append(run_mode(bench, fused, loras, "fused, eager"))
    backup = fused.backup_bytes()
    fused.activate_set([])
    del fused  # its backup copies go with it; the compiled mode makes its own
    # 3. fused + torch.compile: cold compile (empty cache dir), then again from the cache after a Dynamo reset
    compile_cold = compile_warm = None
    if not args.skip_compile:
        import torch._dynamo

        cache = Path(tempfile.mkdtemp(prefix="flux-inductor-"))
        counter = CompileCounter()
        compile_transformer(pipe.transformer, backend, cache, counter)
        compile_cold = bench.image(steps=1, output_type="latent")
        torch._dynamo.reset()
        compile_warm = bench.image(steps=1, output_type="latent")
        fused2 = FusedAdapters(pipe, backup="auto")
        rows.append(run_mode(bench, fused2, loras, f"fused + torch.compile ({backend})", counter))
    total_s = time.perf_counter() - started

    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    command = " ".join(shlex.quote(a) for a in ["python", "bench/gpu_flux.py", *(argv if argv is not None else sys.argv[1:])])
    lines = [f"{'Tiny architecture (--tiny smoke run)' if args.tiny else 'FLUX.1-dev architecture'}, random weights, "
             f"{gpu}, {str(dtype).removeprefix('torch.')}, torch {torch.__version__}; transformer "
             f"{f'{params:.2f} B' if params >= 0.1 else f'{params * 1e3:.2f} M'} parameters; {args.size}x{args.size}, {args.steps} steps, batch 1, text encoders and VAE included; "
             f"two rank-{args.rank} LoRAs on {n_targets} weights (attention + feed-forward); built in {built_s:.0f}s, "
             f"whole run {total_s:.0f}s.", f"Command: `{command}`", "",
             "| mode | s/image (LoRA active) | task switch (ms) | strength change (ms) | compilations after warm-up "
             f"({args.switches} switches) | peak GPU memory (GiB) |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        comp = "n/a (not compiled)" if r["compilations_after_warmup"] is None else str(r["compilations_after_warmup"])
        peak = f"{r['peak_gib']:.1f}" if r["peak_gib"] is not None else "n/a (CPU)"
        lines.append(f"| {r['mode']} | {r['s_per_image']:.3f} | {r['switch_ms']:.1f} | {r['strength_ms']:.1f} | "
                     f"{comp} | {peak} |")
    lines.append("| fp8 (FLUX_QUANTIZE=fp8) | not measured: refused by this build (not implemented) | | | | |")
    lines.append("")
    lines.append(f"Fused backup: {backup['device'] / 2**30:.2f} GiB on the device, {backup['host'] / 2**30:.2f} GiB "
                 "on the host." + (f" torch.compile warm-up (first 1-step call at {args.size}x{args.size}): cold "
                                   f"{compile_cold:.1f}s, again after `torch._dynamo.reset()` {compile_warm:.1f}s (same process; "
                                   + ("inductor's cache filled)." if backend == "inductor" else
                                      f"backend {backend}: Dynamo tracing only, no inductor cache).")
                                   if compile_cold is not None else ""))
    table = "\n".join(lines)
    print(table)
    if docs:
        write_docs(Path(docs), table)
        print(f"\nwritten into {docs}")
    return 0


def write_docs(path: Path, table: str) -> None:
    """Replace what is between the markers (or append a section with them)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    block = f"{START}\n{table}\n{END}"
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n## GPU fast path (bench/gpu_flux.py)\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    raise SystemExit(main())
