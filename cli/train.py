"""``flux-service train``: the command-line face of the trainer (the service runs this same command,
as ``python -m cli train``).

Why the service runs the CLI in a subprocess instead of calling ``train`` in a thread: training owns the
GPU's gradients and gigabytes of optimiser state for twenty minutes; a separate process can be cancelled,
killed or crash without touching the serving engine, and it is exactly what a user runs by hand.
``--events FILE`` appends one JSON line per step/checkpoint/sample (what the HTTP events stream replays)
and ``--cancel-file FILE`` stops at the next step with a checkpoint when that file appears.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cli.common import model_opts, settings_for


def add_parser(sub) -> None:
    t = sub.add_parser(
        "train", help="train a LoRA from a folder or zip of photos (optional same-name .txt captions)",
        description="Train a persona LoRA. Defaults: on a GPU rank 16, alpha 16, 1000 steps, lr 1e-4, "
                    "512/768/1024 buckets, caption dropout 0.05, bf16 + gradient checkpointing; on the demo "
                    "model a 64 px preset that finishes in seconds on a CPU. Output: "
                    "<models_dir>/lora/NAME/pytorch_lora_weights.safetensors, training.json, samples.png.")
    t.add_argument("photos", help="folder or .zip of images (.jpg .png .webp .bmp) with optional NAME.txt captions")
    t.add_argument("--name", required=True, help="output folder name under <models_dir>/lora/ (1-64 letters, digits, "
                   "'_' or '-'; a name the task table registers needs --overwrite)")
    t.add_argument("--trigger", required=True, help="trigger word put first in every caption, e.g. 'ohwx person'")
    # values are parsed and checked by training/options.py (the rules POST /api/trainings applies too)
    t.add_argument("--task", help="also register the LoRA as this task in the task table")
    t.add_argument("--strength", help="the registered task's default lora_alpha, 0-2 (1.0)")
    t.add_argument("--steps", help="training steps")
    t.add_argument("--rank", help="LoRA rank")
    t.add_argument("--alpha", help="LoRA alpha (default = rank)")
    t.add_argument("--lr", help="learning rate")
    t.add_argument("--resolution", help="training resolution(s), comma-separated, e.g. 512,768,1024")
    t.add_argument("--seed", help="random seed (same seed + photos = same LoRA)")
    t.add_argument("--caption-dropout", dest="caption_dropout", help="share of steps without a caption (0.05)")
    t.add_argument("--checkpoint-every", dest="checkpoint_every", help="steps between checkpoints+samples")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint of --name")
    t.add_argument("--overwrite", action="store_true",
                   help="start again even if --name already has results, or replace a LoRA the task table "
                        "registers under that name (its tasks serve the new file after a restart)")
    t.add_argument("--overwrite-task", dest="overwrite_task", action="store_true",
                   help="replace an existing [tasks.TASK] section")
    t.add_argument("--skip-bad", dest="skip_bad", action="store_true",
                   help="train on the usable photos and report the bad files instead of refusing")
    t.add_argument("--events", help=argparse_suppress(), default=None)
    t.add_argument("--cancel-file", dest="cancel_file", help=argparse_suppress(), default=None)
    t.add_argument("--source-label", dest="source_label", help=argparse_suppress(), default=None)
    t.add_argument("--json", action="store_true", help="print training.json at the end")
    model_opts(t)
    t.set_defaults(func=cmd_train)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def cmd_train(args) -> int:
    from pipelines.errors import Cancelled
    from pipelines.model_source import resolve_model_source
    from training import load_dataset, register_task, train
    from training.dataset import DatasetLimits
    from training.event_log import finite
    from training.name_check import check_names_free, replace_warning
    from training.options import FIELDS, parse_options

    settings = settings_for(args)  # the same settings (FLUX_* + options) as every other command
    events = Path(args.events) if args.events else None

    def emit(event: dict) -> None:
        if events is not None:
            with open(events, "a", encoding="utf-8") as f:
                f.write(json.dumps(finite(event), ensure_ascii=False, allow_nan=False) + "\n")

    try:
        options = parse_options({k: getattr(args, k) for k in FIELDS})  # the HTTP route's rules
        source = resolve_model_source(settings)
        config = options.config(demo=source.demo)
        replaces = check_names_free(settings, options, resume=args.resume)  # refused now, not after training
        if replaces:
            print(f"warning: {replace_warning(replaces)}", file=sys.stderr)
        dataset = load_dataset(args.photos, min_images=config.min_images, min_side=config.min_side,
                               skip_bad=options.skip_bad, limits=DatasetLimits.from_settings(settings),
                               label=args.source_label)
        print(f"dataset: {len(dataset.photos)} image(s), {dataset.captioned} with captions, hash "
              f"{dataset.hash[:12]}" + (f"; skipped {len(dataset.problems)}" if dataset.problems else ""),
              file=sys.stderr)
        for p in dataset.problems:
            print(f"warning: skipped {p}", file=sys.stderr)
        emit({"type": "dataset", **{k: v for k, v in dataset.summary().items() if k != "files"}})
        bar = _Bar(config)
        cancel = Path(args.cancel_file) if args.cancel_file else None
        outcome = train(dataset, config, settings, on_event=lambda e: (bar(e), emit(e)),
                        should_stop=(lambda: cancel.exists()) if cancel else None, resume=args.resume,
                        overwrite=options.overwrite)
        bar.close()
    except Cancelled as exc:
        print(f"cancelled: {exc.message}", file=sys.stderr)
        return 3
    except Exception as exc:
        emit({"type": "error", "error": {"type": getattr(exc, "type", "internal_error"),
                                         "message": getattr(exc, "message", str(exc)),
                                         "param": getattr(exc, "param", None),
                                         "problems": [p.to_dict() for p in getattr(exc, "problems", [])]}})
        raise
    print(f"saved {outcome.weights}  ({outcome.report['steps_done']} steps, final loss "
          f"{outcome.report['final_loss']:.4f}, {outcome.report['train_seconds']:.1f}s)"
          + ("  [DEMO MODEL]" if source.demo else ""))
    print(f"report {outcome.output_dir / 'training.json'}  samples {outcome.output_dir / 'samples.png'}")
    if options.task:
        lora_ref = f"lora/{config.name}"  # relative to the models folder, as every task LoRA path is
        size = max(256, max(config.resolutions)) if not source.demo else 256
        register_task(settings.resolved_tasks_file(), options.task, lora=lora_ref, trigger=config.trigger,
                      strength=options.strength, size=min(size, 1024), overwrite=options.overwrite_task,
                      description=f"{config.name} LoRA (trigger '{config.trigger}'), trained by flux-service train")
        print(f"task {options.task!r} added to {settings.resolved_tasks_file()} (lora {lora_ref}, strength "
              f"{options.strength:g}); restart the service to load it")
        emit({"type": "task", "task": options.task, "lora": lora_ref})
    if args.json:
        print(json.dumps(outcome.report, indent=2, ensure_ascii=False))
    return 0


class _Bar:
    """tqdm bar: step, loss and time left (from the steps' own pace, samples excluded)."""

    def __init__(self, config) -> None:
        self.total = config.steps
        self.bar = None

    def __call__(self, event: dict) -> None:
        from tqdm import tqdm

        if event.get("type") == "phase" and event.get("phase") == "training" and self.bar is None:
            self.bar = tqdm(total=self.total, initial=event.get("step", 0), desc="training", unit="step",
                            file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n}/{total} {postfix}")
        elif event.get("type") == "step" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            m, s = divmod(int(event["eta_s"]), 60)
            self.bar.set_postfix_str(f"loss {event['loss']:.4f}, {event['step_s']:.2f}s/step, {m}:{s:02d} left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
