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

Several processes on one trainings folder (Ray ingress replicas, the two ingresses of a rolling update): each
takes uploads and answers for every run (all of it is files), but only one *supervises* (starts the queued
runs, takes back interrupted ones): the one holding the ``flock`` on ``<trainings_dir>/supervisor.lock``.
Another one waits for that lock and takes over when the supervisor's process ends; without it, a second
process's start-up would take "running" runs for interrupted ones and stop the first one's trainer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Mapping, Sequence

from pipelines.errors import Overloaded
from pipelines.settings import Settings
from training.dataset import DatasetLimits, load_dataset
from training.errors import NameTaken, RunNotFound
from training.event_log import EventLog
from training.name_check import check_names_free, lora_folder, replace_warning
from training.options import TrainOptions, parse_options
from training.supervisor import RunSupervisor
from training.upload import save_upload

logger = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")

_RUN_ID = re.compile(r"tr_[0-9a-f]{1,40}")
_REQUIRED = ("id", "status", "created", "name", "config")  # a run.json without them is not a run
_LOGS_KEPT = 32  # parsed event logs kept in memory (least recently read dropped)
#: every upload's photos are checked on this one thread, one upload after the other: the decoded pixels of
#: one photo at a time, and one malloc arena that reuses them (from many threads, each thread's arena kept
#: its own peak: 4 concurrent 49-megapixel uploads held +449 MiB instead of one photo's worth)
_CHECKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="training-check")


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


class TrainingRuns(RunSupervisor):
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
        self._wake = threading.Event()  # set by stop(): the supervisor's sleep ends at once
        self._thread: threading.Thread | None = None
        self._supervisor = None  # the open, flocked supervisor.lock while this process supervises
        self._reserved: set[tuple[str, str]] = set()  # ("name"|"task", value) of submits being checked
        self._logs: OrderedDict[str, EventLog] = OrderedDict()
        self._cache: dict[str, tuple[tuple, dict]] = {}  # run id -> (run.json's stat, its content)
        self.limits = DatasetLimits.from_settings(settings)

    # ------------------------------------------------------------------ state on disk
    def _dir(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
            raise RunNotFound(f"no training {run_id!r}", param="id")
        return self.root / run_id

    def _read(self, run_id: str) -> dict:
        """run.json, parsed again only when the file changed (readers poll it)."""
        path = self._dir(run_id) / "run.json"
        try:
            st = path.stat()
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = self._cache.get(run_id)
            if cached is not None and cached[0] == key:
                return dict(cached[1])
            run = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            raise RunNotFound(f"no training {run_id!r}", param="id") from None
        if not isinstance(run, dict) or any(k not in run for k in _REQUIRED):
            raise RunNotFound(f"no training {run_id!r}", param="id")
        self._cache[run_id] = (key, run)
        return dict(run)

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
                runs.append(self._read(p.parent.name))
            except RunNotFound:
                continue  # half-written or foreign: not a run
        return sorted(runs, key=lambda r: (r["created"] if isinstance(r["created"], (int, float)) else 0, r["id"]))

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

    def submit(self, files: Sequence[tuple[object, bytes | BinaryIO]], values: Mapping[str, object]) -> dict:
        """Check everything a run is asked (fields, names, file names, photos) and queue it; every refusal
        comes before the run exists: 422 naming the field or the files, 409 for a name in use, 413."""
        options = parse_options(values)
        self.admit(registers_task=bool(options.task))
        config = options.config(demo=self.demo)
        with self._reserve(options):
            replaces = check_names_free(self.settings, options)
            run_id = "tr_" + time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(3)
            folder = self.root / run_id
            folder.mkdir(parents=True)
            try:
                source, label = save_upload(folder, files, self.limits)
                dataset = _CHECKER.submit(load_dataset, source, min_images=config.min_images,
                                          min_side=config.min_side, skip_bad=options.skip_bad, limits=self.limits,
                                          label=label).result()
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            warnings = [replace_warning(replaces)] if replaces else []
            run = {"id": run_id, "status": "queued", "created": time.time(), "name": options.name,
                   "trigger": options.trigger, "task": options.task, "strength": options.strength,
                   "overwrite": options.overwrite, "overwrite_task": options.overwrite_task,
                   "skip_bad": options.skip_bad, "source": str(source.relative_to(folder)), "label": label,
                   "config": {"steps": config.steps, "rank": config.rank, "alpha": config.alpha, "lr": config.lr,
                              "resolutions": list(config.resolutions), "seed": config.seed,
                              "caption_dropout": config.caption_dropout,
                              "checkpoint_every": config.checkpoint_every, "preset": config.preset},
                   "dataset": {k: v for k, v in dataset.summary().items() if k != "source"},
                   "replaces": replaces, "warnings": warnings,
                   "attempts": 0, "cancel_requested": False, "error": None, "exit_code": None}
            with self._lock:
                self._write(run)
        for w in warnings:
            logger.warning("training %s: %s", run_id, w)
        logger.info("training %s queued: %s (%d photos, %d steps)", run_id, options.name, len(dataset.photos),
                    config.steps)
        return self.get(run_id)  # the supervisor loop (every 0.2 s) starts it when no other run is going

    @contextmanager
    def _reserve(self, options: TrainOptions):
        """Hold the run's name (and task) while its upload is checked, so that of parallel submits with one
        name exactly one is queued (the others: 409); a queued or running run holds them through run.json."""
        keys = {("name", options.name)} | ({("task", options.task)} if options.task else set())
        with self._lock:
            for run in self.list():
                if run["status"] in TERMINAL:
                    continue
                if run["name"] == options.name:
                    raise NameTaken(f"training {run['id']} is already training {options.name!r}", param="name")
                if options.task and run.get("task") == options.task:
                    raise NameTaken(f"training {run['id']} will register the task {options.task!r}", param="task")
            for kind, value in sorted(keys & self._reserved):
                raise NameTaken(f"another upload for the {kind} {value!r} is being checked right now", param=kind)
            self._reserved |= keys
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= keys

    # ------------------------------------------------------------------ read
    def log(self, run_id: str) -> EventLog:
        """The run's event log, refreshed (only what the trainer appended since the last read is read)."""
        folder = self._dir(run_id)
        with self._lock:
            log = self._logs.pop(run_id, None) or EventLog(folder / "events.jsonl")
            self._logs[run_id] = log
            while len(self._logs) > _LOGS_KEPT:
                self._logs.popitem(last=False)
        log.refresh()
        return log

    def status(self, run_id: str) -> str:
        """The run's status alone (cheap: run.json is parsed again only when it changed)."""
        return self._read(run_id)["status"]

    def get(self, run_id: str) -> dict:
        run = self._read(run_id)
        log = self.log(run_id)
        last = log.last_step
        run["step"] = last["step"] if last else 0
        run["total"] = run["config"]["steps"]
        run["loss"] = last.get("loss") if last else None
        run["eta_s"] = last.get("eta_s") if last and run["status"] == "running" else None
        run["losses"] = [[k, log.losses[k]] for k in sorted(log.losses)]
        run["samples"] = [{"step": e.get("step"), "url": f"/api/trainings/{run_id}/files/{e.get('file')}"}
                          for e in log.samples]
        if run["status"] == "succeeded":
            run["lora"] = f"lora/{run['name']}"
            run["report_url"] = f"/api/trainings/{run_id}/files/training.json"
            run["sample_sheet_url"] = f"/api/trainings/{run_id}/files/samples.png"
        return run

    def file(self, run_id: str, rel: str) -> Path:
        """A file of the run's output folder (samples, report); never outside it."""
        run = self._read(run_id)
        out = lora_folder(self.settings.models_dir, run["name"]).resolve()
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
