"""The fast path on the full FLUX.1-dev architecture, figure by figure, comparable with shared/ANCHORS.md.

Builds FLUX.1-dev's transformer (19 double + 38 single blocks, 11.9 B parameters), T5-XXL, CLIP-L and the FLUX
VAE with random weights directly on the GPU in bf16 (bench/flux_arch.py; nothing is downloaded: the cost of a
step does not depend on the weight values) and two rank-16 LoRAs on the usual attention + feed-forward targets
(342 weights). Each row is printed (and flushed) as soon as it is measured, so a run cut short keeps what it
measured:

- s/step: one denoising step = the transformer call the pipeline makes at 1024x1024 (4096 image + 512 text
  tokens), captured once and replayed; median of ``--step-reps`` after warm-up (CUDA events on a GPU,
  ``perf_counter`` on a CPU). Rows: no LoRA eager and compiled; LoRA active with PEFT eager, fused eager, fused
  compiled; each with its ratio to the no-LoRA eager step (ANCHORS: 0.184 s eager, 0.130 s compiled);
- s/image: a whole 28-step 1024x1024 image (text encoders and VAE included), median of ``--image-reps``;
- task switch (LoRA one -> two) and strength change (0.7 -> 0.8) in ms, median of ``--switch-reps``, and the
  bytes one switch moves (counted, bench/traffic.py);
- compilations after warm-up across ``--switches`` switches, each followed by a step;
- peak GPU memory per row; torch.compile warm-up cold (empty inductor cache) and again after
  ``torch._dynamo.reset()`` from the cache; GPU name and library versions.

    python bench/gpu_flux.py --quick --out DIR   # one H100/H200: under 5 minutes with the model build
    python bench/gpu_flux.py                     # more repetitions (about 8 minutes)
    python bench/gpu_flux.py --tiny              # CPU, the demo-sized architecture: a smoke run (CI)

``--tiny`` uses the ``eager`` torch.compile backend (Dynamo traces and counts graphs as with inductor, without
a C++ toolchain); the GPU run uses inductor. fp8 (``FLUX_QUANTIZE=fp8``) is refused by this build, so its row
says so. ``--out DIR`` writes ``gpu_flux.md`` and ``gpu_flux.json`` there; ``--docs FILE`` replaces the table
between the gpu_flux markers of a markdown file.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PROMPT = "a portrait photo of a science host in a studio"
START, END = "<!-- gpu_flux:start -->", "<!-- gpu_flux:end -->"
#: adapter names that are no substring of each other's PEFT keys: diffusers warns about "missing keys" of an
#: adapter whose name appears inside another adapter's keys (names "A"/"B" match "lora_A"/"lora_B")
ONE, TWO = "bench_one", "bench_two"
HEADER = ("| mode | s/step | step ratio to no-LoRA eager | s/image | task switch (ms) | strength change (ms) | "
          "compilations after warm-up | peak GPU memory (GiB) |")


def size(nbytes: float) -> str:
    """Bytes as GB with enough digits for the tiny model too."""
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.3f} MB"


def median(values) -> float:
    return statistics.median(values)


class Clock:
    """Seconds of one call: CUDA events around it on a GPU (the GPU's own time line), perf_counter on a CPU."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def time(self, fn) -> float:
        import torch

        if not self.cuda:
            started = time.perf_counter()
            fn()
            return time.perf_counter() - started
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000

    def peak_gib(self) -> float | None:
        import torch

        return torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None

    def reset_peak(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


class Bench:
    def __init__(self, args, pipe, device: str) -> None:
        self.args, self.pipe, self.clock = args, pipe, Clock(device)
        self.step_call = self._capture_step()
        self.base_step: float | None = None

    def _capture_step(self):
        """The transformer call of one denoising step, exactly as the pipeline makes it (same kwargs, so a
        compiled transformer reuses the pipeline's graph), recorded from a 1-step latent-only call."""
        import torch

        seen: dict = {}

        def hook(_module, args, kwargs):
            if not seen:
                seen["args"], seen["kwargs"] = args, dict(kwargs)

        handle = self.pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self.image(steps=1, output_type="latent")
        finally:
            handle.remove()

        def step():
            with torch.no_grad():  # as the pipeline's __call__: the same Dynamo guards
                self.pipe.transformer(*seen["args"], **seen["kwargs"])
        return step

    def image(self, steps: int | None = None, output_type: str = "pil") -> None:
        import torch

        self.pipe(prompt=PROMPT, width=self.args.size, height=self.args.size,
                  num_inference_steps=steps or self.args.steps, guidance_scale=3.5,
                  generator=torch.Generator("cpu").manual_seed(0), max_sequence_length=self.args.seq,
                  output_type=output_type)

    def s_per_step(self) -> float:
        for _ in range(2):
            self.step_call()  # warm-up: first-use allocations, cuBLAS heuristics
        return median([self.clock.time(self.step_call) for _ in range(self.args.step_reps)])

    def s_per_image(self) -> float:
        return median([self.clock.time(self.image) for _ in range(self.args.image_reps)])

    def change_ms(self, adapters, first: list, second: list) -> float:
        adapters.activate_set(first)
        times = [self.clock.time(lambda i=i: adapters.activate_set(second if i % 2 == 0 else first))
                 for i in range(self.args.switch_reps)]
        return median(times) * 1000

    def row(self, mode: str, step: float, image: float | None = None, switch_ms: float | None = None,
            strength_ms: float | None = None, compilations: int | None = None) -> dict:
        return {"mode": mode, "s_per_step": step, "ratio_to_eager_step": step / self.base_step if self.base_step
                else 1.0, "s_per_image": image, "switch_ms": switch_ms, "strength_ms": strength_ms,
                "compilations_after_warmup": compilations, "peak_gib": self.clock.peak_gib()}


def fmt_row(r: dict) -> str:
    def num(v, spec, none="n/a"):
        return none if v is None else format(v, spec)

    comp = "n/a (not compiled)" if r["compilations_after_warmup"] is None else str(r["compilations_after_warmup"])
    return (f"| {r['mode']} | {r['s_per_step']:.4f} | {r['ratio_to_eager_step']:.3f} | {num(r['s_per_image'], '.3f')} | "
            f"{num(r['switch_ms'], '.1f')} | {num(r['strength_ms'], '.1f')} | {comp} | "
            f"{num(r['peak_gib'], '.1f', 'n/a (CPU)')} |")


def emit(lines: list[str], text: str) -> None:
    print(text, flush=True)
    lines.append(text)


def lora_modes(bench: Bench, adapters, loras: dict, label: str) -> dict:
    """Load both LoRAs, time switches, then a LoRA-active step and image."""
    for name, lora in loras.items():
        adapters.load(name, lora)
    switch_ms = bench.change_ms(adapters, [(ONE, 0.7)], [(TWO, 0.7)])
    strength_ms = bench.change_ms(adapters, [(ONE, 0.7)], [(ONE, 0.8)])
    adapters.activate_set([(ONE, 0.7)])
    bench.clock.reset_peak()
    step = bench.s_per_step()
    image = bench.s_per_image()
    return bench.row(label, step, image, switch_ms, strength_ms)


def switch_traffic(adapters) -> int:
    """Bytes one task switch moves (aten-level count, bench/traffic.py)."""
    from bench.traffic import Traffic

    adapters.activate_set([(ONE, 0.7)])
    with Traffic() as t:
        adapters.activate_set([(TWO, 0.7)])
    return t.total


def versions(device: str) -> str:
    import diffusers
    import peft
    import torch
    import transformers

    where = "CPU"
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(0)
        where = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, sm_{props.major}{props.minor}), CUDA {torch.version.cuda}"
    return (f"{where}; torch {torch.__version__}, diffusers {diffusers.__version__}, transformers "
            f"{transformers.__version__}, peft {peft.__version__}, Python {sys.version.split()[0]}")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU, demo-sized architecture, few steps: a smoke run for CI")
    p.add_argument("--quick", action="store_true", help="fewest repetitions (3 per median): under 5 GPU minutes")
    p.add_argument("--size", type=int, help="width = height (default 1024; --tiny 64)")
    p.add_argument("--steps", type=int, help="denoising steps per image (default 28; --tiny 2)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--switches", type=int, default=50, help="switches counted for recompilations (default 50)")
    p.add_argument("--switch-reps", dest="switch_reps", type=int, help="changes timed per median (default 20; full 50)")
    p.add_argument("--step-reps", dest="step_reps", type=int, help="steps timed per median (default 5; full 10)")
    p.add_argument("--image-reps", dest="image_reps", type=int, help="images timed per median (default 3; full 5)")
    p.add_argument("--backend", help="torch.compile backend (default inductor; --tiny eager)")
    p.add_argument("--skip-compile", action="store_true")
    p.add_argument("--out", help="folder for gpu_flux.md and gpu_flux.json")
    p.add_argument("--docs", help="replace the table between the gpu_flux markers of this markdown file")
    args = p.parse_args(argv)
    full = not (args.quick or args.tiny)
    args.size = args.size or (64 if args.tiny else 1024)
    args.steps = args.steps or (2 if args.tiny else 28)
    args.seq = 32 if args.tiny else 512
    args.switch_reps = max(3, args.switch_reps or (50 if full else 20))
    args.step_reps = max(3, args.step_reps or (10 if full else 5))
    args.image_reps = max(3, args.image_reps or (5 if full else 3))
    args.backend = args.backend or ("eager" if args.tiny else "inductor")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    import torch

    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")  # two adapters, on purpose
    from bench.flux_arch import FULL, TINY, build_pipeline, random_lora
    from pipelines.compile import CompileCounter, compile_transformer
    from pipelines.lora.fused_adapters import FusedAdapters
    from pipelines.lora.peft_adapters import PeftAdapters

    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU: run with --tiny for the CPU smoke run")
    device = "cpu" if args.tiny else "cuda"
    dtype = torch.float32 if args.tiny else torch.bfloat16
    lines: list[str] = []
    started = time.perf_counter()
    pipe = build_pipeline(TINY if args.tiny else FULL, device, dtype)
    built_s = time.perf_counter() - started
    params = sum(x.numel() for x in pipe.transformer.parameters()) / 1e9
    loras = {ONE: random_lora(pipe.transformer, args.rank, 1), TWO: random_lora(pipe.transformer, args.rank, 2)}
    n_targets = len(loras[ONE].state_dict) // 2
    command = " ".join(shlex.quote(a) for a in ["python", "bench/gpu_flux.py", *(argv if argv is not None else sys.argv[1:])])
    emit(lines, f"{'Demo-sized architecture (--tiny smoke run)' if args.tiny else 'FLUX.1-dev architecture'}, "
                f"random weights, {str(dtype).removeprefix('torch.')}, {versions(device)}; transformer "
                f"{f'{params:.2f} B' if params >= 0.1 else f'{params * 1e3:.2f} M'} parameters; {args.size}x{args.size}, "
                f"{args.steps} steps, {args.seq} text tokens, batch 1; two rank-{args.rank} LoRAs on {n_targets} weights "
                f"(attention + feed-forward); medians of {args.step_reps} steps / {args.image_reps} images / "
                f"{args.switch_reps} changes; built in {built_s:.0f}s.")
    emit(lines, f"Command: `{command}`")
    emit(lines, "")
    emit(lines, HEADER)
    emit(lines, "|---|---:|---:|---:|---:|---:|---:|---:|")
    bench = Bench(args, pipe, device)
    rows, extra = [], {}

    def add(row: dict) -> None:
        rows.append(row)
        emit(lines, fmt_row(row))

    # 1. the base model, eager: the reference of every ratio
    bench.clock.reset_peak()
    bench.base_step = bench.s_per_step()
    add(bench.row("no LoRA, eager", bench.base_step, bench.s_per_image()))
    # 2. fused, eager (FLUX_ADAPTERS=fused without compile)
    fused = FusedAdapters(pipe, backup="auto")
    add(lora_modes(bench, fused, loras, "fused, eager"))
    extra["switch_bytes"] = switch_traffic(fused)
    extra["backup"] = fused.backup_bytes()
    fused.activate_set([])
    del fused  # its backup copies go with it; the compiled mode makes its own
    # 3. PEFT layers, eager (FLUX_ADAPTERS=peft)
    peft = PeftAdapters(pipe)
    add(lora_modes(bench, peft, loras, "peft, eager"))
    peft.activate_set([])
    pipe.transformer.unload_lora()  # back to plain nn.Linear layers
    del peft
    # 4. torch.compile: cold (empty cache dir), again from the cache after a Dynamo reset, then fused switching
    if not args.skip_compile:
        import torch._dynamo

        cache = Path(tempfile.mkdtemp(prefix="flux-inductor-"))
        counter = CompileCounter()
        compile_transformer(pipe.transformer, args.backend, cache, counter)
        bench.clock.reset_peak()
        extra["compile_cold_s"] = bench.clock.time(bench.step_call)
        torch._dynamo.reset()
        extra["compile_warm_s"] = bench.clock.time(bench.step_call)
        warmed = counter.total
        add(bench.row(f"no LoRA, torch.compile ({args.backend})", bench.s_per_step(), bench.s_per_image(),
                      compilations=counter.total - warmed))
        compiled_base = rows[-1]["s_per_step"]
        fused = FusedAdapters(pipe, backup="auto")
        row = lora_modes(bench, fused, loras, f"fused + torch.compile ({args.backend})")
        before = counter.total
        for i in range(args.switches):
            fused.activate_set([(ONE, 0.7)] if i % 2 else [(TWO, round(0.3 + 0.01 * i, 2))])
            bench.step_call()
        row["compilations_after_warmup"] = counter.total - warmed  # every graph since warm-up (0 expected)
        extra["compilations_across_switches"] = counter.total - before
        add(row)
        extra["compiled_lora_vs_base"] = row["s_per_step"] / compiled_base
        fused.activate_set([])
    emit(lines, "| fp8 (FLUX_QUANTIZE=fp8) | not measured: refused by this build (not implemented) | | | | | | |")
    emit(lines, "")
    notes = [f"Fused backup: {size(extra['backup']['device'])} on the device, {size(extra['backup']['host'])} on "
             f"the host; one task switch moves {size(extra['switch_bytes'])} (counted)."]
    if "compile_cold_s" in extra:
        notes.append(f"torch.compile warm-up (first step at {args.size}x{args.size}): cold {extra['compile_cold_s']:.1f}s, "
                     f"again after `torch._dynamo.reset()` {extra['compile_warm_s']:.1f}s (same process; "
                     + ("inductor's cache filled)." if args.backend == "inductor" else
                        f"backend {args.backend}: Dynamo tracing only, no inductor cache).")
                     + f" Fused + compiled step with a LoRA active / compiled step without: "
                       f"{extra['compiled_lora_vs_base']:.3f} (target <= 1.02).")
    notes.append(f"Whole run {time.perf_counter() - started:.0f}s.")
    emit(lines, " ".join(notes))
    table = "\n".join(lines)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_flux.md").write_text(table + "\n", encoding="utf-8")
        (out / "gpu_flux.json").write_text(json.dumps({"rows": rows, **extra}, indent=2, default=str), encoding="utf-8")
    if args.docs:
        write_docs(Path(args.docs), table)
        print(f"\nwritten into {args.docs}", flush=True)
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
