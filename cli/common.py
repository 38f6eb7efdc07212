"""What every ``flux-service`` command shares: settings from ``FLUX_*`` + options, the engine, the
model options, and printing each warning once per run.

Why one module: ``generate``, ``compare``, ``lora inspect``, ``tasks``, ``serve`` and ``train`` must read the
same settings the same way (a bad ``FLUX_*`` value is one ``error (config_error): ...`` line everywhere).
"""

from __future__ import annotations

import sys

#: set by ``cli.main.main`` for generate/compare: shows each warning once per run (cli/console.py)
warnings_once = None


def unseen(warnings_: list[str]) -> list[str]:
    return warnings_once.unseen(warnings_) if warnings_once is not None else list(warnings_)


def warn(w: str) -> None:
    """Print a result's warning unless this run has already shown it (the log may have)."""
    for text in unseen([w]):
        print(f"warning: {text}", file=sys.stderr)


def settings_for(args):
    from pipelines.settings import load_settings

    overrides = {}
    for field in ("model_path", "model_type", "tasks_file", "device", "dtype"):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return load_settings(**overrides)  # a bad FLUX_* value: one `error (config_error): FLUX_X: ...` line


def load_engine(args):
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    from pipelines.engine import FluxEngine

    return FluxEngine.from_settings(settings_for(args))


def model_opts(sp) -> None:
    """The options that pick the model, on every command that loads one."""
    sp.add_argument("--model-path", dest="model_path", help="diffusers-format FLUX folder (FLUX_MODEL_PATH)")
    sp.add_argument("--model-type", dest="model_type", choices=["flux1", "flux1-schnell"])
    sp.add_argument("--tasks-file", dest="tasks_file", help="task table (FLUX_TASKS_FILE)")
    sp.add_argument("--device", help="auto, cpu, cuda, cuda:1 ...")
    sp.add_argument("--dtype", choices=["auto", "bfloat16", "float16", "float32"])
