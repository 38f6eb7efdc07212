"""``flux-service lora inspect`` and ``tasks``: what a LoRA file is and whether it fits, and the task table.

Why before a server starts: "will this LoRA file work with my model?" is answered from the file and a
meta-device model, without loading any weights.
"""

from __future__ import annotations

import json
import sys

from cli.common import model_opts, settings_for


def cmd_lora_inspect(args) -> int:
    """Describe a LoRA file and check it against the configured model without loading the model's weights.
    The path resolves as in the Python API (on the demo model, ``models/lora/...`` may mean the demo's own
    LoRA, with a warning); hash, rank and effective scale are those every result of that file reports."""
    from pipelines.lora.inspect import inspect_lora

    report = inspect_lora(args.path, settings_for(args))
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

    settings = settings_for(args)
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


def add_parsers(sub) -> None:
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

