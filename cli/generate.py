"""``flux-service generate`` and ``compare``: one image, or the task with and without its LoRA side by side.

Why ``compare``: the users' old workflow was a script that saved ``test_without_lora.png`` and
``test_with_lora.png`` to see whether the LoRA was applied at all; ``compare`` does that in one command, with
the same seed, and ``--separate`` still writes those two files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cli.common import load_engine, model_opts, warn


def _progress_bar(desc: str):
    from tqdm import tqdm

    state: dict = {}

    def progress(step: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="step", file=sys.stderr)
        bar = state["bar"]
        bar.update(step - bar.n)
        if step >= total:
            bar.close()

    return progress


def _request(args, **overrides):
    from pipelines.types import GenerationRequest

    fields = dict(prompt=args.prompt, task=args.task, lora_alpha=args.lora_alpha, width=args.width,
                  height=args.height, num_inference_steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                  loras=tuple(args.lora) if getattr(args, "lora", None) else None, translate=args.translate)
    fields.update(overrides)
    return GenerationRequest(**fields)


def _lora_arg(text: str) -> tuple[str, float]:
    """``--lora NAME=SCALE``: a registered LoRA (see ``flux-service tasks``) and its strength."""
    name, sep, scale = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name.strip(), float(scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=SCALE (e.g. film_look=0.4), got {text!r}") from None


def _print_info(info, path: Path) -> None:
    lora = (f"{info.adapter_file} [sha256 {info.adapter_hash}] (adapter {info.adapter_name}, "
            f"alpha={info.lora_scale:g})") if info.adapter_name else "no LoRA"
    if len(info.loras) > 1:
        lora = ", ".join(f"{x['name']}={x['scale']:g} ({x['adapter_file']} [sha256 {x['sha256'][:12]}])"
                         for x in info.loras)
    print(f"saved {path}  task={info.task or '-'}  LoRA: {lora}  seed={info.seed}  {info.width}x{info.height}  "
          f"steps={info.num_inference_steps}  guidance={info.guidance_scale:g}  {info.timings.get('total_s', 0):.2f}s"
          + ("  [DEMO MODEL]" if info.demo else ""))
    if info.prompt != info.prompt_original:
        print(f"prompt sent: {info.prompt}  (translate={info.translate}"
              + (f", translator: {info.translator}" if info.translator else "")
              + (f", {info.dictionary}" if info.dictionary else "")
              + f"; T5 unknown {info.t5_unknown_before:.0%} -> {info.t5_unknown_after:.0%})")
    for w in info.warnings:
        warn(w)


def cmd_generate(args) -> int:
    engine = load_engine(args)
    result = engine.generate(_request(args), progress=_progress_bar("denoising"))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(result.png_bytes())
    _print_info(result.info, out)
    if args.json:
        print(result.info.to_json())
    return 0


def cmd_compare(args) -> int:
    """Same seed, same prompt, same settings: the task's LoRA at its strength, then at strength 0 (exactly
    the base model), side by side in one PNG."""
    from pipelines.errors import InvalidRequest

    engine = load_engine(args)
    task = engine.tasks.get(args.task)
    if not task.lora:
        raise InvalidRequest(f"task {args.task!r} uses no LoRA; nothing to compare", param="task")
    with_lora = engine.generate(_request(args), progress=_progress_bar("with LoRA"))
    seed = with_lora.info.seed
    without = engine.generate(_request(args, seed=seed, lora_alpha=0.0), progress=_progress_bar("without LoRA"))
    sheet = side_by_side(
        [(without.image, "without LoRA"),
         (with_lora.image, f"with {with_lora.info.adapter_name} @ {with_lora.info.lora_scale:g}")],
        footer=f"seed {seed}  {with_lora.info.width}x{with_lora.info.height}  steps {with_lora.info.num_inference_steps}"
               + ("  DEMO MODEL" if engine.is_demo else ""),
    )
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    if args.separate:
        without.image.save(out.with_name("test_without_lora.png"))
        with_lora.image.save(out.with_name("test_with_lora.png"))
    print(f"saved {out} (left: without LoRA, right: with {with_lora.info.adapter_file} at "
          f"alpha={with_lora.info.lora_scale:g}; seed {seed})" + ("  [DEMO MODEL]" if engine.is_demo else ""))
    for w in with_lora.info.warnings + without.info.warnings:
        warn(w)
    return 0


def side_by_side(images, footer: str = ""):
    """Images in a row with a caption under each (PIL only, default font)."""
    from PIL import Image, ImageDraw

    pad, caption = 8, 22
    width = sum(im.width for im, _ in images) + pad * (len(images) + 1)
    height = max(im.height for im, _ in images) + pad * 2 + caption * 2
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    x = pad
    for im, label in images:
        sheet.paste(im.convert("RGB"), (x, pad))
        draw.text((x, pad + im.height + 4), label, fill="black")
        x += im.width + pad
    if footer:
        draw.text((pad, height - caption + 2), footer, fill="gray")
    return sheet


def gen_opts(sp, task_required: bool):
    sp.add_argument("prompt", help="the prompt (Chinese works; see the T5 warning in the output)")
    sp.add_argument("--task", required=task_required, help="task from the task table (omit: base model)")
    sp.add_argument("--lora-alpha", dest="lora_alpha", type=float, help="LoRA strength for this call (0-2)")
    sp.add_argument("--lora", action="append", type=_lora_arg, metavar="NAME=SCALE",
                    help="strength of a registered LoRA for this call, repeatable (several LoRAs at once; "
                         "a task's LoRA gets the new strength, others are added)")
    sp.add_argument("--width", type=int)
    sp.add_argument("--height", type=int)
    sp.add_argument("--steps", type=int, help="num_inference_steps")
    sp.add_argument("--guidance", type=float, help="guidance_scale")
    sp.add_argument("--seed", type=int, help="random when omitted (always printed)")
    sp.add_argument("--translate", choices=["auto", "glossary", "off"],
                    help="Chinese prompts: auto = glossary, then the translation model (models/translator) if "
                         "present, else the offline dictionary, for what T5 cannot read; glossary = glossary only; "
                         "off = as typed (default: FLUX_TRANSLATE, auto)")
    model_opts(sp)



def add_parsers(sub) -> None:
    g = sub.add_parser("generate", help="generate one image to a PNG (with a progress bar)")
    gen_opts(g, task_required=False)
    g.add_argument("-o", "--output", default="out.png")
    g.add_argument("--json", action="store_true", help="also print what was used as JSON")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("compare", help="the task with and without its LoRA, same seed, side by side in one PNG")
    gen_opts(c, task_required=True)
    c.add_argument("-o", "--output", default="compare.png")
    c.add_argument("--separate", action="store_true",
                   help="also write test_without_lora.png and test_with_lora.png beside the output")
    c.set_defaults(func=cmd_compare)

