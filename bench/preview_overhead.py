"""What live previews cost: the same image with previews (about ten per image) and without, side by side.

Prints the ratio of medians over interleaved pairs (one process, one engine), and what one preview costs
alone at 1024x1024 and its size. Not a test: read the ratio, not the seconds. With ``--clock cpu`` the
timings are the calling thread's CPU time with one torch thread (steady on a shared, busy machine).

    .venv/bin/python bench/preview_overhead.py --clock cpu          # about 2 minutes on 2 CPU cores
    .venv/bin/python bench/preview_overhead.py --quick             # a smoke run
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


class EveryFew:
    """A previewer like the HTTP worker's: every ``every_n_steps(total)`` steps, always watched."""

    def __init__(self) -> None:
        self.count = 0

    def wants(self, step: int, total: int) -> bool:
        from pipelines.preview import every_n_steps

        return step % every_n_steps(total) == 0

    def show(self, preview) -> None:
        preview.to_dict()  # the JPEG + base64 the worker makes for the event
        self.count += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--pairs", type=int, default=7)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.steps = 2, 8
    logging.basicConfig(level=logging.ERROR)

    import torch

    from pipelines.engine import FluxEngine
    from pipelines.preview import Preview, preview_image
    from pipelines.settings import Settings
    from pipelines.types import GenerationRequest

    if args.clock == "cpu":
        torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    engine = FluxEngine.from_settings(Settings(_env_file=None, min_size=16, model_path=None, tasks_file=None))
    req = GenerationRequest(prompt="a portrait photo of a science host", width=args.size, height=args.size,
                            num_inference_steps=args.steps, seed=1)
    engine.generate(req)  # warm-up
    plain, with_previews, shown = [], [], 0
    for _ in range(args.pairs):
        t = clock()
        engine.generate(req)
        plain.append(clock() - t)
        rec = EveryFew()
        t = clock()
        engine.generate(req, preview=rec)
        with_previews.append(clock() - t)
        shown = rec.count
    a, b = statistics.median(plain), statistics.median(with_previews)

    latents = torch.randn(1, 64 * 64, 64)
    Preview(1, 28, preview_image(latents, 1024, 1024)).to_dict()
    t, n = clock(), 20
    for _ in range(n):
        event = Preview(1, 28, preview_image(latents, 1024, 1024)).to_dict()
    one_ms = (clock() - t) / n * 1000

    print("| image | previews per image | without (median) | with (median) | ratio |")
    print("|---|---|---|---|---|")
    print(f"| {args.size}x{args.size}, {args.steps} steps | {shown} | {a:.3f} s | {b:.3f} s | {b / a:.3f} |")
    print(f"\nOne preview of a 1024x1024 image (latents -> {event['width']}x{event['height']} JPEG data URL): "
          f"{one_ms:.1f} ms, {len(event['image'])} bytes ({args.clock} clock, {args.pairs} interleaved pairs).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
