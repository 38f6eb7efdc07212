"""The trainings supervisor (``RunSupervisor``, mixed into ``TrainingRuns``): one trainer subprocess at a time.

Why apart from the runs' state on disk (``runs.py``): taking uploads and answering for runs is plain file work
that every process sharing the folder does; starting queued runs, reaping the trainer, taking back runs a
stopped process left, and stopping the trainer on shutdown is the job of exactly one process, the one holding
the ``flock`` on ``<trainings_dir>/supervisor.lock`` (another one waits for it and takes over when that
process ends). A run that cannot start is failed with its reason and the queue moves on; the loop itself
backs off (doubling up to 30 s) rather than spinning on a folder it cannot read.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipelines.errors import FluxServiceError
from training.errors import RunNotFound
from training.name_check import replace_warning
from training.options import TrainOptions, parse_options

logger = logging.getLogger("training.runs")  # the trainings' log lines, under one name

EXIT_CANCELLED = 3
ROOT = Path(__file__).resolve().parent.parent
SUPERVISOR_LOCK = "supervisor.lock"
BACKOFF_MAX_S = 30.0


class RunSupervisor:
    """The supervisor loop of ``TrainingRuns`` (its state is created in ``TrainingRuns.__init__``)."""

    def start(self) -> "RunSupervisor":
        """Supervise (or wait to: see the module docstring), then run the supervisor loop."""
        if self._acquire_supervisor():
            self._take_back()
        else:
            logger.info("trainings in %s are supervised by another process; this one takes uploads and takes over "
                        "when that one stops", self.root)
        self._thread = threading.Thread(target=self._loop, name="trainings", daemon=True)
        self._thread.start()
        return self

    @property
    def supervising(self) -> bool:
        """True while this process starts and takes back the folder's trainings (it holds the lock)."""
        return self._supervisor is not None

    def _acquire_supervisor(self) -> bool:
        try:
            import fcntl
        except ImportError:  # Windows: no flock; one service per trainings folder there
            self._supervisor = True
            return True
        handle = open(self.root / SUPERVISOR_LOCK, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            return False
        self._supervisor = handle
        return True

    def _take_back(self) -> None:
        """Take back what a previous supervisor left: running/interrupted runs resume, queued ones wait."""
        for run in self.list():
            if run["status"] in ("running", "interrupted"):
                pid = run.get("pid")
                if pid and _alive(pid):  # the old trainer outlived its service: stop it at a checkpoint
                    (self._dir(run["id"]) / "cancel").touch()
                    _wait_gone(pid, 60)
                (self._dir(run["id"]) / "cancel").unlink(missing_ok=True)
                self._update(run["id"], status="queued", resume=True)
                logger.warning("training %s was interrupted by a restart; it will resume from its last checkpoint",
                               run["id"])

    def stop(self, grace_s: float = 30.0) -> None:
        """Service shutdown: ask the running trainer to checkpoint and exit; it resumes at next start."""
        self._stopping = True
        self._wake.set()
        with self._lock:
            proc, run_id = self._proc, self._running
            if proc is not None and run_id:
                self._update(run_id, status="interrupted")
                (self._dir(run_id) / "cancel").touch()
        if proc is not None:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._supervisor not in (None, True):
            self._supervisor.close()  # releases the flock: another process may supervise now
        self._supervisor = None

    def _loop(self) -> None:
        """Every 0.2 s: reap the trainer, start the next queued run. A failure (a folder it cannot read, a
        full disk) is logged and retried with a doubling pause up to 30 s, never in a hot loop; a run that
        cannot start is failed by ``_launch`` itself, so it never blocks the runs queued after it."""
        pause = 0.2
        while not self._stopping:
            if self._supervisor is None:  # another process supervises: take over when it is gone
                if self._acquire_supervisor():
                    logger.info("trainings in %s: the supervising process is gone; this one supervises now", self.root)
                    self._take_back()
                else:
                    self._wake.wait(1.0)
                    continue
            try:
                self._tick()
                pause = 0.2
            except Exception:  # the loop must outlive one bad run folder
                pause = min(pause * 2, BACKOFF_MAX_S)
                logger.exception("training supervisor error; next try in %.1f s", pause)
            self._wake.wait(pause)

    def _tick(self) -> None:
        with self._lock:
            if self._proc is not None:
                code = self._proc.poll()
                if code is None:
                    return
                self._finish(self._running, code)
                self._proc, self._running = None, None
            if self._stopping:
                return
            queued = [r for r in self.list() if r["status"] == "queued"]
            if queued:
                self._launch(queued[0])

    def _options(self, run: dict) -> TrainOptions:
        """The run's options, checked again by the shared rules (a run.json written by an older version, or
        edited, may hold values that version accepted)."""
        config = run["config"]
        values = {"name": run["name"], "trigger": run.get("trigger"), "task": run.get("task"),
                  "steps": config.get("steps"), "rank": config.get("rank"), "alpha": config.get("alpha"),
                  "lr": config.get("lr"), "resolution": config.get("resolutions"), "seed": config.get("seed"),
                  "caption_dropout": config.get("caption_dropout"), "checkpoint_every": config.get("checkpoint_every"),
                  "overwrite": run.get("overwrite", False), "overwrite_task": run.get("overwrite_task", False),
                  "skip_bad": run.get("skip_bad", False)}
        if run.get("task"):
            values["strength"] = run.get("strength", 1.0)
        return parse_options(values)

    def _launch(self, run: dict) -> None:
        """Start ``flux-service train`` for ``run``; a run that cannot start is marked failed with its reason
        (the queue moves on). Values are passed as ``--option=value`` and the photos after ``--``, so that
        no value can be read as an option."""
        folder = self._dir(run["id"]).resolve()
        s = self.settings
        try:
            options = self._options(run)
            source = (folder / str(run.get("source", ""))).resolve()
            if folder not in source.parents:
                raise RunNotFound(f"training {run['id']} names no photos of its own", param="photos")
        except (FluxServiceError, KeyError, TypeError, ValueError) as exc:
            self._refuse(run["id"], exc)
            return
        cmd = [sys.executable, "-m", "cli", "train", *options.cli_args(), f"--events={folder / 'events.jsonl'}",
               f"--cancel-file={folder / 'cancel'}", f"--source-label={run.get('label') or source.name}",
               f"--model-type={s.model_type}", f"--device={s.device}", f"--dtype={s.dtype}"]
        if s.model_path is not None:
            cmd.append(f"--model-path={Path(s.model_path).resolve()}")
        cmd.append(f"--tasks-file={s.resolved_tasks_file().resolve()}")
        if run.get("resume"):
            cmd.append("--resume")
        cmd += ["--", str(source)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        env.update(FLUX_MODELS_DIR=str(Path(s.models_dir).resolve()),
                   FLUX_DEMO_CACHE_DIR=str(Path(s.demo_cache_dir).resolve()),
                   FLUX_ALLOW_DEMO=str(s.allow_demo).lower(), FLUX_MAX_SEQUENCE_LENGTH=str(s.max_sequence_length),
                   FLUX_TRAINING_MAX_FILES=str(s.training_max_files),
                   FLUX_TRAINING_MAX_FILE_BYTES=str(s.training_max_file_bytes),
                   FLUX_TRAINING_MAX_IMAGE_PIXELS=str(s.training_max_image_pixels),
                   FLUX_TRAINING_MAX_UNPACKED_BYTES=str(s.training_max_unpacked_bytes), PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        try:
            with open(folder / "log.txt", "ab") as log:
                self._proc = subprocess.Popen(cmd, cwd=str(Path.cwd()), env=env, stdout=log,
                                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except (OSError, ValueError) as exc:
            self._proc = None
            self._refuse(run["id"], exc)
            return
        self._running = run["id"]
        self._update(run["id"], status="running", pid=self._proc.pid, attempts=run.get("attempts", 0) + 1,
                     started=time.time())
        logger.info("training %s started (pid %d)%s", run["id"], self._proc.pid, " with --resume" if run.get("resume") else "")

    def _refuse(self, run_id: str, exc: Exception) -> None:
        if isinstance(exc, FluxServiceError):
            error = {"type": exc.type, "message": f"cannot start: {exc.message}", "param": exc.param}
        else:
            error = {"type": "training_failed", "message": f"the trainer could not be started "
                     f"({type(exc).__name__}); the service log has the details", "param": None}
        logger.error("training %s cannot start, marked failed: %s: %s", run_id, type(exc).__name__, exc)
        self._update(run_id, status="failed", error=error, finished=time.time())

    def _finish(self, run_id: str, code: int) -> None:
        run = self._read(run_id)
        events = self.log(run_id).since(0)
        error = next((e["error"] for e in reversed(events) if e.get("type") == "error"), None)
        if code == 0:
            status = "succeeded"
        elif code == EXIT_CANCELLED and run["cancel_requested"]:
            status = "cancelled"
        elif code == EXIT_CANCELLED or run["status"] == "interrupted" or self._stopping:
            status = "interrupted"  # service shutdown: resumes at the next start
        else:
            status = "failed"
            if error is None:  # the trainer's own output may name server paths: it goes to the log, not the client
                tail = (self._dir(run_id) / "log.txt").read_text(encoding="utf-8", errors="replace")[-2000:]
                logger.error("training %s: the trainer exited with code %d:\n%s", run_id, code, tail)
                error = {"type": "training_failed", "message": f"the trainer exited with code {code}; the service "
                         "log has its last lines", "param": None}
        (self._dir(run_id) / "cancel").unlink(missing_ok=True)
        task_served = None
        if status == "succeeded" and run.get("task") and self.on_task is not None:
            try:
                self.on_task(run["task"])
                task_served = True
            except Exception as exc:  # trained and registered all the same; say why it is not served yet
                logger.error("task %s registered but not served until restart: %s", run["task"], exc)
                task_served = False
        if status == "succeeded" and run.get("replaces"):
            logger.warning("training %s: %s", run_id, replace_warning(run["replaces"]))
        self._update(run_id, task_served=task_served, status=status, exit_code=code, error=error, finished=time.time(), resume=True)
        logger.info("training %s %s (exit code %d)", run_id, status, code)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _wait_gone(pid: int, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end and _alive(pid):
        time.sleep(0.2)
