"""SIGTERM as the docs promise it: drain first, *then* let the server close its port and exit.

Why a hook in front of the server's own signal handler: uvicorn (0.54) handles SIGTERM by closing its port and
waiting for every open connection (``--timeout-graceful-shutdown``, unbounded by default) before it tells the
app, through the lifespan, that it is stopping. Queued requests kept running during that wait, requests still
open at its timeout got a plain-text 500, event streams broke, and only then did the app's own drain start
(default grace 30 s: exit after 55 s). ASGI has no "shutdown is coming" message, so the app hears about the
signal itself: at start-up the lifespan chains a handler in front of whatever handler the server installed
(uvicorn installs its handlers before the lifespan starts, with ``signal.signal``; both ``flux-service serve``
and ``uvicorn app.main:create_app --factory`` run this way).

On the first SIGTERM/SIGINT: the worker drains at once (``Worker.begin_drain``: ``/ready`` 503, queued direct
requests 503 + ``Retry-After``, queued jobs kept on disk with a final ``shutdown`` event, new work 503) while
the port stays open; when the running image is done (or stopped at the end of the grace), the signal is passed
on to the server, which now finds only finished responses to wait for. A second signal passes on at once and
stops the running image at its next step. If the server left its own graceful timeout unset, it is bounded to
``SERVER_CLOSE_S`` so a stuck client cannot hold the exit past grace + 5 s.

The same path stops the service when its worker thread has died (``watch_worker`` -> ``SignalDrain.fail``):
the drain answers what waits, the server closes, and the process exits with ``FAILURE_EXIT_STATUS`` (70) so
that its supervisor starts a fresh one, which resumes the jobs kept on disk.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import signal
import sys
import threading

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SERVER_CLOSE_S = 3  # seconds the server may spend closing connections after the drain
#: exit status after the worker thread died (EX_SOFTWARE): non-zero, so a supervisor restarts the service
FAILURE_EXIT_STATUS = 70
WATCH_S = 0.5  # how often the lifespan looks at the worker thread


class SignalDrain:
    def __init__(self, worker, grace_s: float) -> None:
        self.worker, self.grace_s = worker, grace_s
        self._previous: dict[int, object] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._signals = 0
        self._forwarded = False
        self._failed = False

    def install(self) -> bool:
        """Chain in front of the server's handlers (main thread only, and only where a server handles the
        signal in Python; elsewhere, e.g. under TestClient, the lifespan's own drain is the only one)."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            current = signal.getsignal(sig)
            if callable(current):
                self._previous[sig] = current
                signal.signal(sig, self._on_signal)
        return bool(self._previous)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            if signal.getsignal(sig) == self._on_signal:
                signal.signal(sig, previous)
        self._previous.clear()

    def fail(self, reason: str) -> None:
        """The worker thread died (``Worker.failure``): stop the process with a non-zero status so that its
        supervisor (systemd, Kubernetes, Docker's restart policy) starts a fresh one, which resumes the jobs kept
        on disk. Recover-in-place is not attempted: the engine may have been stopped in the middle of a step.
        Without a server's signal handler (TestClient, an embedding server) ``/ready`` stays 503 and the embedder
        decides."""
        if not self._previous:
            logger.critical("%s; /ready answers 503 until the service is restarted", reason)
            return
        logger.critical("%s; stopping the service (exit status %d) so that its supervisor restarts it; accepted jobs "
                        "are kept on disk and run after the restart", reason, FAILURE_EXIT_STATUS)
        atexit.register(_exit_with, FAILURE_EXIT_STATUS)  # after the server's own clean exit
        self._failed = True
        self._signals += 1  # a signal from now on stops at once, as a second one does
        self.worker.begin_drain(self.grace_s)  # (nothing runs any more: the drain only answers what waits)
        self._loop.create_task(self._forward_when_idle(signal.SIGTERM, None))

    # ------------------------------------------------------------------ signal context (main thread)
    def _on_signal(self, sig: int, frame) -> None:
        # Python runs this between two bytecodes of the main thread, perhaps inside the event loop or holding
        # the worker's lock: do the work on the loop instead.
        self._loop.call_soon_threadsafe(self._handle, sig, frame)

    # ------------------------------------------------------------------ event loop
    def _handle(self, sig: int, frame) -> None:
        self._signals += 1
        if self._signals > 1:
            logger.warning("shutdown: second signal; stopping the running image now")
            self.worker.hurry()
            self._forward(sig, frame)
            return
        logger.info("shutdown (%s): taking no new work; the running image has %gs to finish (signal again to stop "
                    "it now)", signal.Signals(sig).name, self.grace_s)
        self.worker.begin_drain(self.grace_s)
        self._loop.create_task(self._forward_when_idle(sig, frame))

    async def _forward_when_idle(self, sig: int, frame) -> None:
        await asyncio.to_thread(self.worker.join, self.grace_s + 1.5)  # the step running at the grace
        await asyncio.sleep(0.05)  # let the last responses and final events be written
        self._forward(sig, frame)

    def _forward(self, sig: int, frame) -> None:
        if self._forwarded:
            previous = self._previous.get(sig)
            if callable(previous):
                previous(sig, frame)  # e.g. uvicorn's force-exit on a further Ctrl+C
            return
        self._forwarded = True
        previous = self._previous.get(sig)
        _bound_server_close(previous)
        logger.info("shutdown: drained; closing the server")
        server = getattr(previous, "__self__", None)
        if self._failed and hasattr(server, "should_exit"):
            # uvicorn's way to stop, without a signal: the signals its handler saw are raised again when it exits,
            # and the process would end by SIGTERM instead of with its failure status
            server.should_exit = True
        elif callable(previous):
            previous(sig, frame)


async def watch_worker(worker, drain: SignalDrain) -> None:
    """Lifespan task: when the worker thread has died, stop the service (``SignalDrain.fail``)."""
    while getattr(worker, "failure", None) is None:
        await asyncio.sleep(WATCH_S)
    drain.fail(worker.failure)


def _exit_with(status: int) -> None:
    """Last at-exit step after a failure: uvicorn (and ``flux-service serve``) end with status 0 once their server
    stopped; the process must tell its supervisor it failed."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _bound_server_close(handler) -> None:
    """uvicorn's ``Server.handle_exit`` is a bound method: bound its connection wait if the operator left it
    unbounded (``--timeout-graceful-shutdown``), so a client that never closes cannot hold the exit."""
    server = getattr(handler, "__self__", None)
    config = getattr(server, "config", None)
    if config is not None and hasattr(config, "timeout_graceful_shutdown") and config.timeout_graceful_shutdown is None:
        config.timeout_graceful_shutdown = SERVER_CLOSE_S
