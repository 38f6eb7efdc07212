"""``flux-service serve --ray`` from start to exit: SIGTERM and Ctrl-C as in one process, then a clean exit.

Why not Serve's own shutdown: ``serve.shutdown()`` kills the HTTP proxy and every replica at once, so the
running image's client got an empty reply, queued jobs were cancelled, and on a cluster we had joined it
removed every other application too. Ray's driver handler turned SIGTERM into an abort that left Ray's agent
processes behind. What happens now, on the first SIGTERM or SIGINT:

1. The ingress drains while everything is still up (``FluxIngress.drain``, the worker's rules: no new
   work, queued direct requests 503, queued jobs kept in the job store, running images get
   ``FLUX_SHUTDOWN_GRACE_S``, then are stopped at their next step); we wait until it reports nothing running.
2. Our application alone is deleted (``serve.delete``): the ingress closes the job store, Serve waits for the
   last answers to be written.
3. A private Ray instance (the default: no ``RAY_ADDRESS``) is shut down (``ray.shutdown``: its processes,
   Serve's controller and proxy with them), and we wait for them to be gone (killing any that linger past
   ``REAP_S``). A joined cluster is only left.
Exit status 0 (1 when the application failed to start: the replica's error is logged, then the same
clean-up). A second signal stops the running images at once (their next step). A signal during start-up
stops it and cleans up the same way; but once the ingress runs (Serve's ``serve.run`` returns a poll interval or
more after the app already answers and takes jobs), it is drained first, as after start-up.
"""

from __future__ import annotations

import logging
import signal
import threading

logger = logging.getLogger(__name__)

#: how long Ray's processes may take to exit after ``ray.shutdown`` before they are killed
REAP_S = 10.0
#: beyond the grace: how long we wait for the ingress to report nothing running
DRAIN_MARGIN_S = 10.0


class _StartInterrupted(BaseException):
    """A signal arrived while the app was still starting (a BaseException, like KeyboardInterrupt: no
    ``except Exception`` on the way may swallow it)."""


class _Signals:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0
        self.serving = False
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        """After ``ray.init`` (which installs its own SIGTERM handler: exit at once)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def _on_signal(self, sig: int, frame) -> None:
        self.count += 1
        self.event.set()
        if not self.serving and self.count == 1:
            raise _StartInterrupted(signal.Signals(sig).name)


def serve_forever(settings, replicas: int, *, setup_hook: str | None = None, extend_app=None) -> int:
    """Run until SIGTERM/SIGINT, then drain and exit cleanly (module docstring); returns the exit status."""
    import ray.serve  # noqa: F401 - its import sets up the "ray.serve" logger, which we then turn down

    from app.ray_serve.launch import connect, start

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve's progress lines here; ours say it all
    private = connect(setup_hook=setup_hook)
    status = 0
    signals = _Signals()
    signals.install()
    try:
        try:
            start(settings, replicas, extend_app=extend_app)
        except Exception as exc:  # noqa: BLE001 - e.g. a replica's start-up failed: Serve's message, no traceback
            logger.error("start-up failed: %s", _last_line(exc))
            status = 1
        else:
            signals.serving = True
            while not signals.event.wait(1.0):
                pass
            _drain(settings.shutdown_grace_s, signals)
    except _StartInterrupted as exc:
        signals.serving = True  # a further signal now hurries the drain, as after start-up
        if _ingress_running():  # Serve's start-up returns a poll or more after the app answers: it took work
            logger.info("shutdown (%s) as start-up ended; the service already answers: draining it", exc)
            _drain(settings.shutdown_grace_s, signals)
        else:
            logger.info("shutdown (%s) during start-up: stopping", exc)
    finally:
        signals.serving = True  # a further signal now only hurries the steps below
        _stop(private)
        signals.uninstall()
    return status


def _last_line(exc: BaseException) -> str:
    """Serve wraps a replica's start-up error in its traceback; the last line names the error and says why."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _ingress_running() -> bool:
    """Whether a replica of our ingress runs: it may have accepted requests and jobs, which must be drained."""
    from ray import serve

    from app.ray_serve.launch import APP_NAME, INGRESS_NAME

    try:
        app = serve.status().applications.get(APP_NAME)
    except Exception:  # noqa: BLE001 - Serve not started yet: nothing of ours answers
        return False
    ingress = app.deployments.get(INGRESS_NAME) if app is not None else None
    return bool(ingress is not None and ingress.replica_states.get("RUNNING", 0))


def _drain(grace_s: float, signals: _Signals) -> None:
    from ray import serve

    from app.ray_serve.launch import APP_NAME

    logger.info("shutdown: taking no new work; running images have %gs to finish (signal again to stop them now)",
                grace_s)
    handle = serve.get_app_handle(APP_NAME)
    response = handle.drain.remote(grace_s, grace_s + DRAIN_MARGIN_S)
    hurried = False
    while True:
        try:
            state = response.result(timeout_s=0.5)
            break
        except TimeoutError:
            if signals.count > 1 and not hurried:
                logger.warning("shutdown: second signal; stopping the running images now")
                handle.hurry.remote()
                hurried = True
    if state["idle"]:
        logger.info("shutdown: drained")
    else:
        logger.warning("shutdown: the ingress still has work %gs after the grace; stopping anyway", DRAIN_MARGIN_S)


def _stop(private: bool) -> None:
    """Remove our application; a private instance: stop Ray and wait for its processes."""
    import ray
    from ray import serve

    from app.ray_serve.launch import APP_NAME

    try:
        serve.delete(APP_NAME)
    except Exception as exc:  # noqa: BLE001 - never deployed, or Ray already gone: nothing of ours is left there
        logger.info("shutdown: application %r not deleted (%s)", APP_NAME, exc)
    ours = _ray_processes() if private else []
    ray.shutdown()  # a private instance: stops its processes, Serve's controller and proxy included
    if ours:
        _reap(ours)
    logger.info("shut down%s", " (Ray stopped)" if private else " (the cluster keeps running)")


def _ray_processes() -> list:
    """The processes our private Ray instance runs (GCS, raylet, agents, workers): all our descendants."""
    import psutil

    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _reap(processes: list) -> None:
    import psutil

    gone, alive = psutil.wait_procs(processes, timeout=REAP_S)
    if alive:
        logger.warning("shutdown: %d Ray process(es) still running %gs after ray.shutdown; killing them: %s",
                       len(alive), REAP_S, ", ".join(f"{_name(p)} ({p.pid})" for p in alive))
        for p in alive:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(alive, timeout=5)


def _name(process) -> str:
    try:
        return process.name()
    except Exception:  # noqa: BLE001
        return "?"
