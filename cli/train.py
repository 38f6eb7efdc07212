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
    t.add_argument("--name", required=True, help="output folder name under <models_dir>/lora/")
    t.add_argument("--trigger", required=True, help="trigger word put first in every caption, e.g. 'ohwx person'")
    t.add_argument("--task", help="also register the LoRA as this task in the task table")
    t.add_argument("--strength", type=float, default=1.0, help="the registered task's default lora_alpha (1.0)")
    t.add_argument("--steps", type=int)
    t.add_argument("--rank", type=int)
    t.add_argument("--alpha", type=float, help="LoRA alpha (default = rank)")
    t.add_argument("--lr", type=float, help="learning rate")
    t.add_argument("--resolution", help="training resolution(s), comma-separated, e.g. 512,768,1024")
    t.add_argument("--seed", type=int)
    t.add_argument("--caption-dropout", dest="caption_dropout", type=float)
    t.add_argument("--checkpoint-every", dest="checkpoint_every", type=int, help="steps between checkpoints+samples")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint of --name")
    t.add_argument("--overwrite", action="store_true", help="start again even if --name already has results")
    t.add_argument("--overwrite-task", dest="overwrite_task", action="store_true",
                   help="replace an existing [tasks.TASK] section")
    t.add_argument("--skip-bad", dest="skip_bad", action="store_true",
                   help="train on the usable photos and report the bad files instead of refusing")
    t.add_argument("--events", help=argparse_suppress(), default=None)
    t.add_argument("--cancel-file", dest="cancel_file", help=argparse_suppress(), default=None)
    t.add_argument("--json", action="store_true", help="print training.json at the end")
    model_opts(t)
    t.set_defaults(func=cmd_train)


def argparse_suppress():
    import argparse

    return argparse.SUPPRESS


def cmd_train(args) -> int:
    from pipelines.errors import Cancelled
    from pipelines.model_source import resolve_model_source
    from training import check_task_free, load_dataset, preset, register_task, train

    settings = settings_for(args)  # the same settings (FLUX_* + options) as every other command
    events = Path(args.events) if args.events else None

    def emit(event: dict) -> None:
        if events is not None:
            with open(events, "a", encoding="utf-8") as f:
                f.write(json.dumps(event, ensure_ascii=False) + "\n")

    try:
        source = resolve_model_source(settings)
        resolutions = [int(r) for r in args.resolution.split(",")] if args.resolution else None
        alpha = args.alpha if args.alpha is not None else (float(args.rank) if args.rank is not None else None)
        config = preset(args.name, args.trigger, demo=source.demo, steps=args.steps, rank=args.rank, alpha=alpha,
                        lr=args.lr, resolutions=resolutions, seed=args.seed, caption_dropout=args.caption_dropout,
                        checkpoint_every=args.checkpoint_every)
        if args.task:  # refuse a clash now, not after twenty minutes of training
            check_task_free(settings.resolved_tasks_file(), args.task, args.overwrite_task)
        dataset = load_dataset(args.photos, min_images=config.min_images, min_side=config.min_side,
                               skip_bad=args.skip_bad)
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
                        overwrite=args.overwrite)
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
    if args.task:
        lora_ref = _lora_ref(outcome.output_dir, source.models_root)
        size = max(256, max(config.resolutions)) if not source.demo else 256
        register_task(settings.resolved_tasks_file(), args.task, lora=lora_ref, trigger=config.trigger,
                      strength=args.strength, size=min(size, 1024), overwrite=args.overwrite_task,
                      description=f"{config.name} LoRA (trigger '{config.trigger}'), trained by flux-service train")
        print(f"task {args.task!r} added to {settings.resolved_tasks_file()} (lora {lora_ref}, strength "
              f"{args.strength:g}); restart the service to load it")
        emit({"type": "task", "task": args.task, "lora": lora_ref})
    if args.json:
        print(json.dumps(outcome.report, indent=2, ensure_ascii=False))
    return 0


def _lora_ref(output_dir: Path, models_root: Path) -> str:
    """Relative to the folder task LoRA paths are resolved against, else absolute (demo model: the demo's
    models root is a cache folder, so our models_dir output is referenced by its absolute path)."""
    try:
        return output_dir.resolve().relative_to(models_root.resolve()).as_posix()
    except ValueError:
        return str(output_dir.resolve())


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
