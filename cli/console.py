"""What the command line prints: our own lines, once each, without third-party noise.

Why here and not at import: STYLE.md says never change other libraries' logging at import, and a program
that imports ``pipelines`` must see every warning the libraries give. The CLI (``flux-service generate``,
``compare``, ``serve``, so ``make serve`` too) calls ``quiet_third_party()`` at start-up; ``-v`` keeps
everything, and so does an explicit ``-W``/``PYTHONWARNINGS`` (the user asked for those warnings).

What is filtered (all of it said by a library about itself, nothing a user of this service can act on):
deprecation warnings raised inside diffusers/transformers/torch/peft/huggingface_hub (e.g. diffusers'
"`torch_dtype` is deprecated"), transformers' "requires torchvision (not installed)" notice (we use no
image processor), and the libraries' loading progress bars. Log levels are not touched.
"""

from __future__ import annotations

import logging
import sys
import warnings

LIBRARIES = r"(diffusers|transformers|torch|torchvision|peft|huggingface_hub|accelerate)(\.|$)"
#: transformers notices that say nothing about this service: (logger name, text the message contains)
NOTICES = (("transformers.utils.import_utils", "requires torchvision (not installed)"),)


class _DropMessages(logging.Filter):
    def __init__(self, fragment: str) -> None:
        super().__init__()
        self.fragment = fragment

    def filter(self, record: logging.LogRecord) -> bool:
        return self.fragment not in record.getMessage()


def quiet_third_party(verbose: bool = False) -> None:
    """Filter the libraries' start-up noise (see the module docstring). Call once, from an entry point."""
    if verbose:
        return
    if not sys.warnoptions:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=LIBRARIES)
    for name, fragment in NOTICES:
        logging.getLogger(name).addFilter(_DropMessages(fragment))
    try:
        import diffusers
        import transformers
    except ImportError:  # pragma: no cover - both are dependencies
        return
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class WarningsOnce(logging.Filter):
    """For one CLI run: each warning reaches the terminal once.

    The engine logs a prompt warning (``prompt: T5 mapped ...``) and also returns it in
    ``info.warnings``, which the CLI prints; a comparison makes two images with the same prompt. This
    filter, on the console handler, drops a repeated warning record, and ``unseen`` tells the CLI which
    of a result's warnings the log has not shown yet.
    """

    def __init__(self) -> None:
        super().__init__()
        self.shown: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if message in self.shown:
            return False
        self.shown.add(message)
        return True

    def unseen(self, warnings_: list[str]) -> list[str]:
        out = []
        for w in warnings_:
            if not any(m.endswith(w) for m in self.shown):
                out.append(w)
                self.shown.add(w)
        return out
