"""Registering a trained LoRA as a task: append one ``[tasks.NAME]`` section to the task table.

Why text editing and not a TOML round-trip: the task table is hand-written and commented (it documents
every key), and Python's ``tomllib`` cannot write. So the new section is appended (or, with
``overwrite=True``, the old section's lines are replaced in place), every other byte is kept, and the
result is validated with the service's own loader before it replaces the file atomically.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from pipelines.tasks import load_task_table
from training.errors import NameTaken, TrainingConfigError

_HEADER = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*(#.*)?$")


def _toml_str(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings


def check_task_free(tasks_file: Path, task: str, overwrite: bool) -> None:
    """Refuse a task name the table already has, before any training starts (not after twenty minutes)."""
    if tasks_file.exists() and not overwrite and task in load_task_table(tasks_file).tasks:
        raise NameTaken(f"task {task!r} already exists in {tasks_file}; choose another --task or pass "
                        "--overwrite-task to replace it", param="task")


def task_section(task: str, *, lora: str, trigger: str, strength: float, size: int, description: str) -> str:
    return (f"[tasks.{task}]\n"
            f"description = {_toml_str(description)}\n"
            f"lora = {_toml_str(lora)}\n"
            f"lora_alpha = {float(strength)!r}\n"
            f"trigger_words = [{_toml_str(trigger)}]\n"
            f'prompt_template = "{{prompt}}"\n'
            f"width = {size}\n"
            f"height = {size}\n")


def register_task(tasks_file: Path, task: str, *, lora: str, trigger: str, strength: float = 1.0,
                  size: int = 1024, description: str = "", overwrite: bool = False) -> Path:
    """Add (or with ``overwrite`` replace) ``[tasks.<task>]``; refuse to clobber an existing task."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", task):
        raise TrainingConfigError(f"`task` {task!r} must be 1-64 letters, digits, '_' or '-'", param="task")
    tasks_file = Path(tasks_file)
    text = tasks_file.read_text(encoding="utf-8") if tasks_file.exists() else ""
    existing = load_task_table(tasks_file).tasks if text.strip() else {}
    section = task_section(task, lora=lora, trigger=trigger, strength=strength, size=size,
                           description=description or f"LoRA {Path(lora).name} trained by flux-service train")
    if task in existing:
        if not overwrite:
            raise TrainingConfigError(f"task {task!r} already exists in {tasks_file}; choose another --task or "
                                      "pass --overwrite-task to replace it", param="task")
        new_text = _replace_section(text, task, section)
    else:
        new_text = text.rstrip("\n") + ("\n\n" if text.strip() else "") + \
            "# added by `flux-service train` (trigger word first in every prompt)\n" + section
    tmp = tasks_file.with_name(tasks_file.name + ".tmp")
    tmp.write_text(new_text, encoding="utf-8")
    try:
        load_task_table(tmp)  # the service's own validation: never write a table it would refuse
    except Exception:
        tmp.unlink()
        raise
    os.replace(tmp, tasks_file)
    return tasks_file


def _replace_section(text: str, task: str, section: str) -> str:
    lines = text.splitlines(keepends=True)
    start = end = None
    for i, line in enumerate(lines):
        m = _HEADER.match(line)
        if m and start is None and m.group("name").strip() == f"tasks.{task}":
            start = i
        elif m and start is not None:
            end = i
            break
    assert start is not None
    end = end if end is not None else len(lines)
    while end > start + 1 and (not lines[end - 1].strip() or lines[end - 1].lstrip().startswith("#")):
        end -= 1  # leave the comments and blank lines that introduce the next section where they are
    return "".join(lines[:start]) + section + "".join(lines[end:])
