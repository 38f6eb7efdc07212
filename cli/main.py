"""``flux-service``: the command line (generate, compare, lora inspect, tasks, serve, train).

Why a CLI next to the HTTP service: the same engine, for one-shot images, checks of a LoRA file before a
server is started, and training. This package is the top layer: it may import app/, training/ and
pipelines/, and nothing imports it. Heavy imports (torch, diffusers) happen inside the commands, so
``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import sys

import cli.common
from cli import generate, lora, serve, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flux-service",
        description="FLUX.1 image generation with per-task LoRA adapters. Settings come from FLUX_* environment "
                    "variables (see README); options below override them. With no model configured and no "
                    "models/flux1-dev folder, the embedded demo model (random weights) is used.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate.add_parsers(sub)
    lora.add_parsers(sub)
    serve.add_parser(sub)
    train.add_parser(sub)  # light: the trainer's heavy imports happen when it runs
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cli.console import WarningsOnce, quiet_third_party

    quiet_third_party(verbose=args.verbose)
    if args.command in ("generate", "compare"):
        once = cli.common.warnings_once = WarningsOnce()
        for handler in logging.getLogger().handlers:
            handler.addFilter(once)
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
