"""The task table: start-up errors name the task and the file; requests name only known tasks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.engine import FluxEngine
from pipelines.errors import AdapterNotFound, ConfigError, UnknownTask
from tests.conftest import make_settings
from tests.engine_helpers import request

REPO_TASKS = Path(__file__).resolve().parents[1] / "models" / "tasks.toml"


def _tasks_file(tmp_path, body: str) -> Path:
    path = tmp_path / "tasks.toml"
    path.write_text(body, encoding="utf-8")
    return path


def test_bad_task_lora_path_stops_engine_construction_naming_task_and_file(settings, tmp_path):
    tasks = _tasks_file(tmp_path, '[tasks.host_face]\nlora = "lora/host_persn"\nlora_alpha = 0.7\n')
    with pytest.raises(AdapterNotFound) as caught:
        FluxEngine.from_settings(make_settings(tasks_file=tasks, demo_cache_dir=settings.demo_cache_dir))
    assert "task 'host_face'" in caught.value.message
    assert "host_persn" in caught.value.message


def test_unknown_task_error_lists_valid_tasks(engine):
    with pytest.raises(UnknownTask) as caught:
        engine.generate(request(task="host_fase"))
    assert caught.value.param == "task"
    assert "'host_fase'" in caught.value.message
    for name in ("host_face", "character_face", "science_background"):
        assert name in caught.value.message


@pytest.mark.parametrize(("body", "complaint"), [
    ('[tasks.host_face]\nlora = "lora/host_person"\nlora_strength = 0.7\n',
     "tasks.host_face: lora_strength: Extra inputs are not permitted"),
    ('[tasks.host_face]\nlora = "lora/host_person"\nlora_alpha = 3.5\n',
     "tasks.host_face: lora_alpha: Input should be less than or equal to 2"),
    ('[tasks.host_face]\nwidth = 1000\n', "tasks.host_face: width: Input should be a multiple of 16"),
    ('[tasks.host_face]\nprompt_template = "photo of the host"\n',
     "tasks.host_face: prompt_template: Value error, must contain {prompt}"),
    ('[task.host_face]\nlora = ""\n', "unknown top-level keys ['task']"),
    ('[tasks.host_face\n', "is not valid TOML"),
], ids=["unknown_key", "strength_out_of_range", "width_not_multiple_of_16", "template_without_placeholder",
        "misspelt_table", "not_toml"])
def test_task_table_error_names_the_file_and_the_problem(tmp_path, body, complaint):
    tasks = _tasks_file(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        FluxEngine.from_settings(make_settings(tasks_file=tasks))
    assert str(tasks) in caught.value.message
    assert complaint in caught.value.message


def test_repository_task_table_defines_the_three_tasks(engine):
    assert engine.tasks.source.resolve() == REPO_TASKS
    infos = {t.name: t for t in engine.task_infos()}
    assert (infos["host_face"].adapter_name, infos["host_face"].lora_alpha) == ("host_person", 0.7)
    assert (infos["character_face"].adapter_name, infos["character_face"].lora_alpha) == ("host_person", 0.7)
    assert (infos["science_background"].adapter_name, infos["science_background"].lora_alpha) == (None, 0.0)


def test_lora_configs_is_read_only_with_a_helpful_type_error(engine):
    from model_manager import ModelManager

    configs = ModelManager(engine=engine).lora_configs
    with pytest.raises(TypeError, match="read-only.*tasks.toml.*lora_alpha="):
        configs["host_face"]["lora_alpha"] = 1.0
    with pytest.raises(TypeError, match="read-only"):
        configs["new_task"] = {"lora_path": "x", "lora_alpha": 1.0}
    with pytest.raises(TypeError, match="read-only"):
        configs["host_face"].update(lora_alpha=1.0)
    assert configs["host_face"]["lora_alpha"] == 0.7
