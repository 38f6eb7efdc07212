"""``flux-service``: the command line (generate, compare, lora inspect, tasks, serve, train).

Why a CLI next to the HTTP service: the users' old workflow was a script that saved
``test_without_lora.png`` and ``test_with_lora.png``; ``compare`` does that in one command, and
``lora inspect`` answers "will this LoRA file work with my model?" before a server is started.
Heavy imports (torch, diffusers) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger("flux_service.cli")
#: set by main() for generate/compare: shows each warning once per run (app/console.py)
_once = None


def _unseen(warnings_: list[str]) -> list[str]:
    return _once.unseen(warnings_) if _once is not None else list(warnings_)


def _warn(w: str) -> None:
    """Print a result's warning unless this run has already shown it (the log may have)."""
    for text in _unseen([w]):
        print(f"warning: {text}", file=sys.stderr)


def _settings(args):
    from pipelines.settings import load_settings

    overrides = {}
    for field in ("model_path", "model_type", "tasks_file", "device", "dtype"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return load_settings(**overrides)  # a bad FLUX_* value: one `error (config_error): FLUX_X: ...` line


def _engine(args):
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    from pipelines.engine import FluxEngine

    return FluxEngine.from_settings(_settings(args))


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
              + f"; T5 unknown {info.t5_unknown_before:.0%} -> {info.t5_unknown_after:.0%})")
    for w in info.warnings:
        _warn(w)


def cmd_generate(args) -> int:
    engine = _engine(args)
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

    engine = _engine(args)
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
        _warn(w)
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


def cmd_lora_inspect(args) -> int:
    """Describe a LoRA file and check it against the configured model without loading the model's weights.
    The path resolves as in the Python API (on the demo model, ``models/lora/...`` may mean the demo's own
    LoRA, with a warning); hash, rank and effective scale are those every result of that file reports."""
    from pipelines.lora_inspect import inspect_lora

    report = inspect_lora(args.path, _settings(args))
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2))
    else:
        for k, v in report.items():
            if k == "target_modules":
                v = ", ".join(f"{name} x{n}" for name, n in sorted(v.items()))
            elif k == "effective_scale_at_strength_1":
                v = ", ".join(f"{name} x{scale:g}" for name, scale in v.items())
            elif isinstance(v, list):
                v = ", ".join(map(str, v)) or "none"
            elif isinstance(v, dict):
                v = ", ".join(f"{name}={value}" for name, value in v.items()) or "none"
            print(f"{k:>30}: {v}")
    for w in report["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    return 0 if report["fits_configured_model"] else 1


def cmd_tasks(args) -> int:
    from pipelines.tasks import load_task_table

    settings = _settings(args)
    table = load_task_table(settings.resolved_tasks_file())
    rows = [("task", "LoRA", "strength", "size", "steps", "guidance", "description")]
    for t in table.tasks.values():
        lora = (t.lora if len(t.loras) == 1 else ", ".join(n for n, _ in t.loras)) or "none"
        strength = ", ".join(f"{s:g}" for _, s in t.loras) or "-"
        rows.append((t.name, lora, strength, f"{t.width}x{t.height}",
                     str(t.num_inference_steps or "model"), f"{t.guidance_scale:g}" if t.guidance_scale is not None
                     else "model", t.description))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if table.loras:
        print("\nregistered LoRAs (--lora NAME=SCALE, or `loras` in a request):")
        for entry in table.loras.values():
            users = [t.name for t in table.tasks.values() if any(n == entry.name for n, _ in t.loras)]
            print(f"  {entry.name}  {entry.path}  used by: {', '.join(users) or '-'}"
                  + (f"  {entry.description}" if entry.description else ""))
    print(f"\n(from {table.source}; a request's lora_alpha overrides the strength for that request)")
    return 0


def cmd_serve(args) -> int:
    import uvicorn

    from app.http_guard import server_options
    from app.main import create_app
    from app.shutdown import SERVER_CLOSE_S

    settings = _settings(args).model_copy(update={k: v for k, v in (("host", args.host), ("port", args.port))
                                                  if v is not None})
    if args.ray:  # the same app behind Ray Serve's proxy, N engine replicas (app/ray_serve, docs/deploy.md)
        try:
            from app.ray_serve import serve_forever
        except ImportError as exc:
            print(f"error: --ray needs Ray Serve ({exc}); install it with pip install -e '.[ray]'", file=sys.stderr)
            return 2
        serve_forever(settings, args.replicas if args.replicas is not None else settings.ray_replicas)
        return 0
    # SIGTERM drains in the app first (app/shutdown.py: the running image gets FLUX_SHUTDOWN_GRACE_S); uvicorn's
    # own wait afterwards only has finished responses to flush
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                timeout_graceful_shutdown=SERVER_CLOSE_S,
                **server_options(settings))  # header/body timeouts, connection limit (app/http_guard.py)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flux-service",
        description="FLUX.1 image generation with per-task LoRA adapters. Settings come from FLUX_* environment "
                    "variables (see README); options below override them. With no model configured and no "
                    "models/flux1-dev folder, the embedded demo model (random weights) is used.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_opts(sp):
        sp.add_argument("--model-path", dest="model_path", help="diffusers-format FLUX folder (FLUX_MODEL_PATH)")
        sp.add_argument("--model-type", dest="model_type", choices=["flux1", "flux1-schnell"])
        sp.add_argument("--tasks-file", dest="tasks_file", help="task table (FLUX_TASKS_FILE)")
        sp.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
        sp.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])

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
                        help="Chinese prompts: auto = glossary, then the translation model for what T5 cannot read; "
                             "glossary = glossary only; off = as typed (default: FLUX_TRANSLATE, auto)")
        model_opts(sp)

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

    lora = sub.add_parser("lora", help="LoRA file tools")
    lsub = lora.add_subparsers(dest="lora_command", required=True, metavar="SUBCOMMAND")
    li = lsub.add_parser("inspect", help="layout, components, rank, effective scale, DoRA, trigger words, sha256, "
                                         "and whether it fits the model")
    li.add_argument("path", help="LoRA folder or .safetensors file (on the demo model, a missing models/lora/... "
                                 "path means the demo's own LoRA, with a warning)")
    li.add_argument("--json", action="store_true")
    model_opts(li)
    li.set_defaults(func=cmd_lora_inspect)

    t = sub.add_parser("tasks", help="print the task table")
    t.add_argument("--tasks-file", dest="tasks_file")
    t.set_defaults(func=cmd_tasks)

    s = sub.add_parser("serve", help="start the HTTP service (POST /api/generate-image, web page at /)")
    s.add_argument("--host", help="bind address (FLUX_HOST, default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (FLUX_PORT, default 8000)")
    s.add_argument("--log-level", dest="log_level", default="info")
    s.add_argument("--ray", action="store_true",
                   help="serve through Ray Serve: a local Ray instance, or the cluster at RAY_ADDRESS (needs the "
                        "'ray' extra; see docs/deploy.md)")
    s.add_argument("--replicas", type=int, help="with --ray: engine replicas, one GPU each (FLUX_RAY_REPLICAS)")
    model_opts(s)
    s.set_defaults(func=cmd_serve)

    from training.cli import add_train_parser  # light: the trainer's heavy imports happen when it runs

    add_train_parser(sub, model_opts)
    return p


def main(argv: list[str] | None = None) -> int:
    global _once
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .console import WarningsOnce, quiet_third_party

    quiet_third_party(verbose=args.verbose)
    if args.command in ("generate", "compare"):
        _once = WarningsOnce()
        for handler in logging.getLogger().handlers:
            handler.addFilter(_once)
    from pipelines.errors import FluxServiceError

    try:
        return args.func(args)
    except FluxServiceError as exc:
        print(f"error ({exc.type}): {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
