"""Our log lines inside Ray Serve's processes: where an operator looks, once each.

Why: in a replica only Ray Serve's own logger (``ray.serve``) has handlers (the replica's log file under
``<session>/logs/serve/`` and stderr, which ``flux-service serve --ray`` forwards to its console). Our loggers
(``pipelines.*``, ``app.*``) propagate to the root logger, which has none, so the per-image line
(``generated task=...``) and the start-up lines vanished and the warnings came out bare through Python's
last-resort handler. Ray Serve's documented way to log from a replica is the ``ray.serve`` logger; this hands
our records to it, so they get its handlers, its format (with the replica and request id) and its log file.
"""

from __future__ import annotations

import logging

SERVE_LOGGER = "ray.serve"
OURS = ("pipelines", "app", "training")


class _ToServe(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger(SERVE_LOGGER).handle(record)


def route_to_serve_logs() -> None:
    """Call once in a replica (its constructor): our loggers at INFO, through Ray Serve's handlers only."""
    for name in OURS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _ToServe) for h in logger.handlers):
            logger.addHandler(_ToServe())
        logger.setLevel(logging.INFO)
        logger.propagate = False  # not a second time through the root logger's (or the last-resort) handler
