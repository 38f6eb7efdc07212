"""Which names a training may take: never, silently, the LoRA that a task already serves.

Why (issue 17): ``models/tasks.toml`` gives ``host_face`` and ``character_face`` the LoRA ``lora/host_person``
(on the demo model the demo's own stands in, as there is no such folder). A training named ``host_person``
wrote ``models/lora/host_person/`` and succeeded; after the next restart both tasks served the new file with
no word said: exactly the failure our users' old guide is about. So a name whose folder is a registered
LoRA's (or that a registered LoRA is called) is refused with 409 naming the tasks that use it, unless the
user asks to overwrite; then the run records what it replaces and says so. ``flux-service train`` and
``POST /api/trainings`` apply the same rules (``check_names_free``).
"""

from __future__ import annotations

import os
from pathlib import Path

from pipelines.lora.paths import task_lora_path
from pipelines.tasks import load_task_table
from training.errors import NameTaken
from training.lora_file import WEIGHTS_NAME
from training.options import TrainOptions
from training.task_register import check_task_free


def lora_folder(models_dir: Path, name: str) -> Path:
    """Where a training named ``name`` writes (``<models_dir>/lora/<name>``)."""
    return Path(models_dir) / "lora" / name


def registered_users(tasks_file: Path, models_dir: Path, name: str) -> tuple[list[str], list[str]]:
    """The registered LoRAs that a training named ``name`` would replace (same name, or a path in its
    folder), and the tasks using them, in table order. ([], []) without a task table."""
    tasks_file = Path(tasks_file)
    if not tasks_file.is_file():
        return [], []
    table = load_task_table(tasks_file)
    out = os.path.abspath(lora_folder(models_dir, name))
    hits = []
    for entry in table.loras.values():
        path = os.path.abspath(task_lora_path(entry.path, models_dir))
        if entry.name == name or path == out or path.startswith(out + os.sep):
            hits.append(entry.name)
    tasks = [t.name for t in table.tasks.values() if any(lora in hits for lora, _ in t.loras)]
    return hits, tasks


def check_names_free(settings, options: TrainOptions, *, resume: bool = False) -> dict | None:
    """Refuse (``NameTaken``, 409) a name whose folder holds results (unless ``overwrite``, or ``resume`` on
    the command line), a task that exists (unless ``overwrite_task``), and a registered LoRA's name (unless
    ``overwrite``). Returns what an allowed overwrite replaces: ``{"lora", "tasks"}``, or None. Messages
    name folders relative to the models folder, never a server path."""
    name = options.name
    out = lora_folder(settings.models_dir, name)
    if not (resume or options.overwrite) and ((out / WEIGHTS_NAME).exists() or (out / "checkpoints").exists()):
        raise NameTaken(f"a LoRA named {name!r} already exists (lora/{name} in the models folder); choose another "
                        "name, or overwrite it (`overwrite=true`; on the command line `--overwrite`, or `--resume` "
                        "to continue its training)", param="name")
    if options.task:
        check_task_free(settings.resolved_tasks_file(), options.task, options.overwrite_task)
    loras, tasks = registered_users(settings.resolved_tasks_file(), settings.models_dir, name)
    if not loras:
        return None
    users = f"task(s) {', '.join(tasks)}" if tasks else "no task yet"
    if not options.overwrite:
        raise NameTaken(f"the LoRA name {name!r} is registered in the task table ({', '.join(loras)}; used by "
                        f"{users}): a training with this name would replace the file they serve. Choose another "
                        "name, or overwrite it on purpose (`overwrite=true`, `--overwrite`)", param="name")
    return {"lora": name, "tasks": tasks}


def replace_warning(replaces: dict) -> str:
    tasks = ", ".join(replaces["tasks"]) or "no task"
    return (f"this training replaces the registered LoRA {replaces['lora']!r} (overwrite asked): {tasks} will serve "
            "the new file after the service restarts")
