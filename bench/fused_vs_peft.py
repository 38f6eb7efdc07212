"""How far the fused strategy's pictures are from PEFT's, on a given device and dtype (demo model).

Why a bound per device and dtype: fused computes ``cast(W0 + s * scale * B @ A) x`` (one rounding of the merged
weight), PEFT ``W0 x + s * scale * B (A x)`` (the LoRA branch rounded on its own). In float32 the two pictures
are within 2 of 255 (tests/test_fused_adapters.py); in bf16 each rounding is 2^-8 relative, so they differ more,
and neither is "the" answer: both are compared with the same model in float32 on the same device, which
shows whether one of them drifts or both are equally far.

    python bench/fused_vs_peft.py --device cpu --dtype bfloat16
    python bench/fused_vs_peft.py --device cuda --dtype bfloat16 --out DIR    # bench/gpu_check.sh

Prints, over every (seed, strength): the largest and the median per-image maximum pixel difference (0-255)
fused vs PEFT, fused vs float32, PEFT vs float32; uncompiled engines (compile changes no arithmetic bound
here, and PEFT is never compiled).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

PROMPT = "a portrait photo of a science host"


def _engine(device: str, dtype: str, adapters: str):
    from pipelines.engine import FluxEngine
    from pipelines.settings import Settings

    settings = Settings(_env_file=None, device=device, dtype=dtype, adapters=adapters, compile="off", min_size=16,
                        model_path=None, tasks_file=None, data_dir=tempfile.mkdtemp(prefix="flux-bench-"))
    return FluxEngine.from_settings(settings)


def _pixels(engine, seed: int, strength: float, size: int, steps: int):
    import numpy as np

    from pipelines.types import GenerationRequest

    result = engine.generate(GenerationRequest(prompt=PROMPT, task="host_face", lora_alpha=strength, seed=seed,
                                               width=size, height=size, num_inference_steps=steps))
    return np.asarray(result.image).astype(np.int16)


def measure(device: str, dtype: str, seeds: int, strengths: list[float], size: int, steps: int) -> dict:
    engines = {"fused": _engine(device, dtype, "fused"), "peft": _engine(device, dtype, "peft"),
               "float32": _engine(device, "float32", "fused")}
    diffs: dict[str, list[int]] = {"fused vs peft": [], "fused vs float32": [], "peft vs float32": []}
    for seed in range(seeds):
        for strength in strengths:
            px = {k: _pixels(e, seed, strength, size, steps) for k, e in engines.items()}
            for pair in diffs:
                a, b = pair.split(" vs ")
                diffs[pair].append(int(abs(px[a] - px[b]).max()))
    return {"device": device, "dtype": dtype, "size": size, "steps": steps, "seeds": seeds, "strengths": strengths,
            "pairs": {k: {"max": max(v), "median": statistics.median(v)} for k, v in diffs.items()}}


def render(m: dict) -> str:
    lines = [f"Fused vs PEFT on the demo model, {m['device']}/{m['dtype']} (float32 reference on {m['device']}); "
             f"task host_face, {m['size']}x{m['size']}, {m['steps']} steps, {m['seeds']} seeds x strengths "
             f"{', '.join(f'{s:g}' for s in m['strengths'])}; per-image max pixel difference (of 255).", "",
             "| pair | largest | median |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['max']} | {v['median']:g} |" for k, v in m["pairs"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--strengths", default="0.7,1.0,1.5")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--out", help="folder for fused_vs_peft.md")
    args = p.parse_args(argv)
    m = measure(args.device, args.dtype, args.seeds, [float(s) for s in args.strengths.split(",")], args.size,
                args.steps)
    text = render(m)
    print(text, flush=True)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "fused_vs_peft.md").write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
