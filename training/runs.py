"""Trainings submitted over HTTP: a folder per run on disk, one ``flux-service train`` subprocess at a time.

Why a subprocess and files: a training holds gigabytes of optimiser state for twenty minutes; in its own
process it can be cancelled, can crash or be killed without touching the serving engine, and it is exactly
the command a user runs by hand. Everything about a run lives in ``<trainings_dir>/<id>/`` (``run.json``
with its state, the uploaded photos, ``events.jsonl`` written by the trainer, ``log.txt``), so a service
restart loses nothing: runs that were queued or running are started again with ``--resume`` and continue
from their last checkpoint. On shutdown a running training is asked to stop (it checkpoints first).

Sharing one GPU with generation: see ``admit`` (a training starts only when enough GPU memory is free;
image generation is never paused, it keeps being served while a training runs, more slowly). A training that
registers a task also makes the serving engine back up the weights its LoRA touches (fused strategy: up to
16 GiB in bf16 for our trainer's targets on FLUX.1-dev, bench/flux_memory.py); admission counts that too.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipelines.errors import InvalidRequest, Overloaded
from pipelines.settings import Settings
from training.config import preset
from training.dataset import load_dataset
from training.errors import NameTaken, TrainingConfigError

logger = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
EXIT_CANCELLED = 3
ROOT = Path(__file__).resolve().parent.parent


class RunNotFound(InvalidRequest):
    type = "not_found"


GIB = 1024**3


def served_lora_backup_bytes(engine) -> int:
    """GPU bytes the serving engine's fused backup grows by when it serves a LoRA written by our trainer (its
    ``TARGET_MODULES`` on the transformer, weights not backed up yet); 0 for other strategies or no weights."""
    need = getattr(getattr(engine, "adapters", None), "device_backup_needed", None)
    transformer = getattr(getattr(engine, "pipe", None), "transformer", None)
    if need is None or transformer is None:
        return 0
    import torch

    from training.config import TARGET_MODULES

    names = [n for n, m in transformer.named_modules() if isinstance(m, torch.nn.Linear)
             and any(n == t or n.endswith("." + t) for t in TARGET_MODULES)]
    return need("transformer", names)


def _cuda_free_bytes(device: str) -> int:
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return free


class TrainingRuns:
    def __init__(self, settings: Settings, *, demo: bool, device: str, on_task=None, backup_need=None,
                 free_memory=None) -> None:
        #: () -> bytes the serving engine's fused backup adds when it serves the trained LoRA (a task)
        self.backup_need = backup_need or (lambda: 0)
        #: () -> free bytes on the training's GPU (torch.cuda.mem_get_info)
        self.free_memory = free_memory or (lambda: _cuda_free_bytes(self.device))
        self.settings = settings
        #: called with the task name when a run that registered a task succeeds (the app serves it at once)
        self.on_task = on_task
        self.demo = demo
        self.device = device
        self.root = Path(settings.trainings_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._proc: subprocess.Popen | None = None
        self._running: str | None = None
        self._stopping = False
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ state on disk
    def _dir(self, run_id: str) -> Path:
        if not run_id.startswith("tr_") or not run_id[3:].isalnum():
            raise RunNotFound(f"no training {run_id!r}", param="id")
        return self.root / run_id

    def _read(self, run_id: str) -> dict:
        path = self._dir(run_id) / "run.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise RunNotFound(f"no training {run_id!r}", param="id") from None

    def _write(self, run: dict) -> None:
        folder = self._dir(run["id"])
        tmp = folder / "run.json.tmp"
        tmp.write_text(json.dumps(run, indent=2, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, folder / "run.json")

    def _update(self, run_id: str, **changes) -> dict:
        with self._lock:
            run = self._read(run_id)
            run.update(changes)
            self._write(run)
            return run

    def list(self) -> list[dict]:
        runs = []
        for p in sorted(self.root.glob("tr_*/run.json")):
            try:
                runs.append(json.loads(p.read_text(encoding="utf-8")))
            except (OSError, json.JSONDecodeError):
                continue
        return sorted(runs, key=lambda r: r["created"])

    # ------------------------------------------------------------------ submit
    def admit(self, registers_task: bool = False) -> None:
        """GPU sharing policy: refuse (503, retry later) unless enough GPU memory is free for a training next
        to the resident serving model (``FLUX_TRAINING_MIN_FREE_GPU_GIB``) plus, when the run registers a task,
        the fused backup the serving engine will add for its LoRA; generation itself is never paused."""
        if not self.device.startswith("cuda"):
            return
        free = self.free_memory() / GIB
        need = self.settings.training_min_free_gpu_gib
        backup = self.backup_need() / GIB if registers_task else 0.0
        if free < need + backup:
            extra = (f" + {backup:.1f} GiB for the fused backup of the LoRA the registered task will serve"
                     if backup else "")
            raise Overloaded(f"not enough free GPU memory to train: {free:.1f} GiB free, {need:g} GiB needed for the "
                             f"training (FLUX_TRAINING_MIN_FREE_GPU_GIB){extra}; retry when generation load is lower")

    def submit(self, files: list[tuple[str, bytes]], options: dict) -> dict:
        """Save the upload, check the photos and the options now (422 naming files), then queue it."""
        self.admit(registers_task=bool(options.get("task")))
        name, trigger = options.get("name") or "", options.get("trigger") or ""
        resolutions = options.get("resolution")
        config = preset(name, trigger, demo=self.demo, steps=options.get("steps"), rank=options.get("rank"),
                        alpha=options.get("alpha") if options.get("alpha") is not None else
                        (float(options["rank"]) if options.get("rank") is not None else None),
                        lr=options.get("lr"), seed=options.get("seed"),
                        resolutions=[int(r) for r in str(resolutions).split(",")] if resolutions else None)
        task = options.get("task")
        if task:
            from training.task_register import check_task_free

            check_task_free(self.settings.resolved_tasks_file(), task, bool(options.get("overwrite_task")))
        from training.loop import output_dir_for

        out = output_dir_for(self.settings, name)
        if (out / "pytorch_lora_weights.safetensors").exists() or (out / "checkpoints").exists():
            raise NameTaken(f"a LoRA named {name!r} already exists in {out.parent}; choose another name", param="name")
        with self._lock:
            active = [r for r in self.list() if r["status"] not in TERMINAL and r["name"] == name]
        if active:
            raise NameTaken(f"training {active[0]['id']} is already training {name!r}", param="name")
        if not files:
            raise TrainingConfigError("no photos uploaded (send them as `photos` files, or one .zip)", param="photos")
        run_id = "tr_" + time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
        folder = self.root / run_id
        photos = folder / "photos"
        photos.mkdir(parents=True)
        try:
            zips = [f for f in files if f[0].lower().endswith(".zip")]
            if zips and len(files) > 1:
                raise TrainingConfigError("send either one .zip or image files, not both", param="photos")
            for filename, data in files:
                safe = Path(filename.replace("\\", "/")).name
                if not safe or safe.startswith("."):
                    continue
                (folder if zips else photos).joinpath(safe).write_bytes(data)
            source = folder / Path(zips[0][0]).name if zips else photos
            dataset = load_dataset(source, min_images=config.min_images, min_side=config.min_side)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        run = {"id": run_id, "status": "queued", "created": time.time(), "name": name, "trigger": trigger,
               "task": task or None, "strength": float(options.get("strength") or 1.0),
               "overwrite_task": bool(options.get("overwrite_task")), "source": str(source.relative_to(folder)),
               "config": {"steps": config.steps, "rank": config.rank, "alpha": config.alpha, "lr": config.lr,
                          "resolutions": list(config.resolutions), "seed": config.seed, "preset": config.preset},
               "dataset": {k: v for k, v in dataset.summary().items() if k != "source"},
               "attempts": 0, "cancel_requested": False, "error": None, "exit_code": None}
        with self._lock:
            self._write(run)
        logger.info("training %s queued: %s (%d photos, %d steps)", run_id, name, len(dataset.photos), config.steps)
        return self.get(run_id)  # the supervisor loop (every 0.2 s) starts it when no other run is going

    # ------------------------------------------------------------------ read
    def events(self, run_id: str, offset: int = 0) -> tuple[list[dict], int]:
        """Events written by the trainer after byte ``offset`` (whole lines only), and the new offset."""
        path = self._dir(run_id) / "events.jsonl"
        if not path.exists():
            return [], offset
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        out = []
        for line in data[:end].splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out, offset + end

    def get(self, run_id: str) -> dict:
        run = self._read(run_id)
        events, _ = self.events(run_id)
        steps = [e for e in events if e.get("type") == "step"]
        run["step"] = steps[-1]["step"] if steps else 0
        run["total"] = run["config"]["steps"]
        run["loss"] = steps[-1]["loss"] if steps else None
        run["eta_s"] = steps[-1]["eta_s"] if steps and run["status"] == "running" else None
        by_step = {e["step"]: e["loss"] for e in steps}  # a resumed run repeats the steps after its checkpoint
        run["losses"] = [[k, by_step[k]] for k in sorted(by_step)]
        run["samples"] = [{"step": e["step"], "url": f"/api/trainings/{run_id}/files/{e['file']}"}
                          for e in events if e.get("type") == "sample"]
        if run["status"] == "succeeded":
            run["lora"] = f"lora/{run['name']}"
            run["report_url"] = f"/api/trainings/{run_id}/files/training.json"
            run["sample_sheet_url"] = f"/api/trainings/{run_id}/files/samples.png"
        return run

    def file(self, run_id: str, rel: str) -> Path:
        """A file of the run's output folder (samples, report); never outside it."""
        from training.loop import output_dir_for

        run = self._read(run_id)
        out = output_dir_for(self.settings, run["name"]).resolve()
        path = (out / rel).resolve()
        if out not in path.parents or not path.is_file() or path.suffix not in (".png", ".json"):
            raise RunNotFound(f"training {run_id!r} has no file {rel!r}", param="file")
        return path

    # ------------------------------------------------------------------ cancel
    def cancel(self, run_id: str) -> dict:
        with self._lock:
            run = self._read(run_id)
            if run["status"] in TERMINAL:
                return self.get(run_id)
            if run["status"] == "queued":
                self._update(run_id, status="cancelled", cancel_requested=True)
                return self.get(run_id)
            self._update(run_id, cancel_requested=True)
            (self._dir(run_id) / "cancel").touch()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and self._read(run_id)["status"] not in TERMINAL:
            time.sleep(0.1)
        return self.get(run_id)

    # ------------------------------------------------------------------ the worker
    def start(self) -> "TrainingRuns":
        """Take back what a previous service left: running/interrupted runs resume, queued ones wait."""
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
        self._thread = threading.Thread(target=self._loop, name="trainings", daemon=True)
        self._thread.start()
        return self

    def stop(self, grace_s: float = 30.0) -> None:
        """Service shutdown: ask the running trainer to checkpoint and exit; it resumes at next start."""
        self._stopping = True
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

    def _loop(self) -> None:
        while not self._stopping:
            try:
                self._tick()
            except Exception:  # the loop must outlive one bad run folder
                logger.exception("training supervisor error")
            time.sleep(0.2)

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

    def _launch(self, run: dict) -> None:
        folder = self._dir(run["id"])
        s = self.settings
        cmd = [sys.executable, "-m", "cli", "train", str(folder / run["source"]), "--name", run["name"],
               "--trigger", run["trigger"], "--events", str(folder / "events.jsonl"),
               "--cancel-file", str(folder / "cancel"), "--steps", str(run["config"]["steps"]),
               "--rank", str(run["config"]["rank"]), "--alpha", str(run["config"]["alpha"]),
               "--lr", str(run["config"]["lr"]), "--seed", str(run["config"]["seed"]),
               "--resolution", ",".join(map(str, run["config"]["resolutions"])),
               "--model-type", s.model_type, "--device", s.device, "--dtype", s.dtype]
        if s.model_path is not None:
            cmd += ["--model-path", str(s.model_path)]
        if s.tasks_file is not None:
            cmd += ["--tasks-file", str(s.tasks_file)]
        if run.get("task"):
            cmd += ["--task", run["task"], "--strength", str(run["strength"])]
            if run.get("overwrite_task"):
                cmd.append("--overwrite-task")
        if run.get("resume"):
            cmd.append("--resume")
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        env.update(FLUX_MODELS_DIR=str(Path(s.models_dir).resolve()), FLUX_DEMO_CACHE_DIR=str(s.demo_cache_dir),
                   FLUX_ALLOW_DEMO=str(s.allow_demo).lower(), FLUX_MAX_SEQUENCE_LENGTH=str(s.max_sequence_length),
                   PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        with open(folder / "log.txt", "ab") as log:
            self._proc = subprocess.Popen(cmd, cwd=str(Path.cwd()), env=env, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        self._running = run["id"]
        self._update(run["id"], status="running", pid=self._proc.pid, attempts=run.get("attempts", 0) + 1,
                     started=time.time())
        logger.info("training %s started (pid %d)%s", run["id"], self._proc.pid, " with --resume" if run.get("resume") else "")

    def _finish(self, run_id: str, code: int) -> None:
        run = self._read(run_id)
        events, _ = self.events(run_id)
        error = next((e["error"] for e in reversed(events) if e.get("type") == "error"), None)
        if code == 0:
            status = "succeeded"
        elif code == EXIT_CANCELLED and run["cancel_requested"]:
            status = "cancelled"
        elif code == EXIT_CANCELLED or run["status"] == "interrupted" or self._stopping:
            status = "interrupted"  # service shutdown: resumes at the next start
        else:
            status = "failed"
            if error is None:
                tail = (self._dir(run_id) / "log.txt").read_text(encoding="utf-8", errors="replace")[-600:]
                error = {"type": "training_failed", "message": f"the trainer exited with code {code}: {tail}",
                         "param": None}
        (self._dir(run_id) / "cancel").unlink(missing_ok=True)
        task_served = None
        if status == "succeeded" and run.get("task") and self.on_task is not None:
            try:
                self.on_task(run["task"])
                task_served = True
            except Exception as exc:  # trained and registered all the same; say why it is not served yet
                logger.error("task %s registered but not served until restart: %s", run["task"], exc)
                task_served = False
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
