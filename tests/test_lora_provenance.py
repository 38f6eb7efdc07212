"""Which LoRA file made a picture: one path resolution everywhere, the demo's LoRA never standing in silently,
and the file named relative to the models folder with its sha256 (issue 7, item 1 and provenance)."""

from __future__ import annotations

import hashlib
import logging
import shutil

import pytest

from pipelines.errors import AdapterNotFound, ConfigError
from pipelines.lora.paths import locate_lora
from tests import lora_builders as build
from tests.conftest import make_settings
from tests.engine_helpers import request

DEMO_FILE = "lora/host_person/pytorch_lora_weights.safetensors"


def _short(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def _users_models_dir(tmp_path, demo_root, tasks: str):
    """FLUX_MODELS_DIR=<tmp>/models with the user's own host_person LoRA (other bytes than the demo's)."""
    from safetensors.torch import load_file, save_file

    models = tmp_path / "models"
    (models / "lora" / "host_person").mkdir(parents=True)
    sd = load_file(str(demo_root / DEMO_FILE))
    save_file({k: v * 2 if "lora_B" in k else v for k, v in sd.items()}, str(models / DEMO_FILE))
    (models / "tasks.toml").write_text(tasks, encoding="utf-8")
    return models


def test_users_own_lora_in_models_dir_is_used_on_the_demo_model(demo_root, tmp_path):
    from pipelines.engine import FluxEngine

    models = _users_models_dir(tmp_path, demo_root, '[tasks.host_face]\nlora = "lora/host_person"\n')
    engine = FluxEngine.from_settings(make_settings(models_dir=models))
    info = engine.generate(request(task="host_face")).info
    assert engine.is_demo
    assert info.adapter_file == DEMO_FILE  # relative to the models folder: the user's file, not "demo:..."
    assert info.adapter_hash == _short(models / DEMO_FILE) != _short(demo_root / DEMO_FILE)
    assert not any("LoRA" in w for w in info.warnings)
    assert engine.task_infos()[0].adapter_hash == info.adapter_hash


def test_demo_lora_standing_in_is_a_warning_in_every_result(engine, demo_root):
    info = engine.generate(request(task="host_face")).info
    assert info.adapter_file == "demo:" + DEMO_FILE
    assert info.adapter_hash == _short(demo_root / DEMO_FILE)
    (note,) = [w for w in info.warnings if "LoRA" in w]
    assert "demo's own LoRA demo:lora/host_person" in note and "models/lora/host_person" in note
    task = next(t for t in engine.task_infos() if t.name == "host_face")
    assert task.warnings == [note] and task.adapter_file == "demo:" + DEMO_FILE


def test_demo_lora_standing_in_is_logged_at_warning_level(demo_root, caplog):
    from pathlib import Path

    caplog.set_level(logging.INFO, logger="pipelines")
    where = locate_lora("models/lora/host_person", models_dir=Path("models"), demo_root=demo_root, task="host_face")
    assert where.path == demo_root / "lora" / "host_person" and where.demo_substitute
    assert [r.levelno for r in caplog.records if "demo's own LoRA" in r.getMessage()] == [logging.WARNING]


def test_relative_task_path_the_demo_lacks_points_into_the_models_folder_not_the_cache(tmp_path):
    from pipelines.engine import FluxEngine

    (tmp_path / "tasks.toml").write_text('[tasks.x]\nlora = "lora/nobody"\n', encoding="utf-8")
    with pytest.raises(AdapterNotFound) as caught:
        FluxEngine.from_settings(make_settings(models_dir=tmp_path))
    message = caught.value.message
    assert str(tmp_path / "lora" / "nobody") in message and "FLUX_MODELS_DIR" in message
    assert ".cache" not in message and "task 'x'" in message


def test_task_table_and_results_never_show_absolute_paths(engine):
    for task in engine.task_infos():
        assert task.adapter_file is None or not task.adapter_file.startswith("/")
        assert ".cache" not in str(task.to_dict())
    info = engine.generate(request(task="host_face")).info
    assert ".cache" not in info.to_json()


def test_trigger_words_from_lora_are_put_in_front_of_the_prompt(tmp_path, demo_root):
    from pipelines.engine import FluxEngine

    meta = {"ss_output_name": "hostx", "ss_tag_frequency": '{"10_hostx person": {"hostx": 12, "smile": 3}}'}
    build.kohya_flux_lora(demo_root / "flux1-dev", tmp_path / "hostx.safetensors", metadata=meta)
    (tmp_path / "tasks.toml").write_text('[tasks.host]\nlora = "hostx.safetensors"\ntrigger_words = "from-lora"\n',
                                         encoding="utf-8")
    engine = FluxEngine.from_settings(make_settings(models_dir=tmp_path))
    (task,) = engine.task_infos()
    assert task.lora_trigger_words == ["hostx person"] and task.trigger_words == ["hostx person"]
    assert task.adapter_file == "hostx.safetensors"
    assert engine.generate(request(task="host")).info.prompt.startswith("hostx person, ")


def test_trigger_words_from_a_lora_that_records_none_is_a_start_up_error(tmp_path, demo_root):
    from pipelines.engine import FluxEngine

    shutil.copytree(demo_root / "lora", tmp_path / "lora")
    (tmp_path / "tasks.toml").write_text('[tasks.host]\nlora = "lora/host_person"\ntrigger_words = "from-lora"\n',
                                         encoding="utf-8")
    with pytest.raises(ConfigError, match="records none"):
        FluxEngine.from_settings(make_settings(models_dir=tmp_path))


def test_ai_toolkit_config_yaml_beside_the_file_gives_format_and_trigger_words(tmp_path, demo_root):
    from pipelines.lora.files import read_lora

    shutil.copy(demo_root / DEMO_FILE, tmp_path / "lora.safetensors")
    (tmp_path / "config.yaml").write_text(
        "job: extension\nconfig:\n  name: host\n  process:\n    - type: sd_trainer\n      trigger_word: \"hostx, 主持人\"\n",
        encoding="utf-8")
    lora = read_lora(tmp_path / "lora.safetensors")
    assert (lora.format, lora.trigger_words) == ("ai-toolkit", ["hostx", "主持人"])


def test_a_stray_config_yaml_beside_a_lora_does_not_block_it(tmp_path, demo_root):
    from pipelines.lora.files import read_lora

    shutil.copy(demo_root / DEMO_FILE, tmp_path / "lora.safetensors")
    (tmp_path / "config.yaml").write_text("key: [unclosed\n", encoding="utf-8")
    lora = read_lora(tmp_path / "lora.safetensors")
    assert (lora.format, lora.trigger_words) == ("diffusers", [])


def test_demo_stand_in_warning_names_no_server_path(demo_root, tmp_path, caplog):
    """Issue 17 item 15: with an absolute FLUX_MODELS_DIR the warning every result carries (X-Adapter-Warnings,
    info.warnings, /api/tasks) named the server's folders; clients get the path relative to the models folder,
    the operator's log line keeps the full one."""
    models = tmp_path / "models"
    caplog.set_level(logging.INFO, logger="pipelines")
    where = locate_lora(models / "lora" / "host_person", models_dir=models, demo_root=demo_root, task="host_face")
    assert where.demo_substitute and str(tmp_path) not in where.note and str(demo_root) not in where.note
    assert "lora/host_person" in where.note and "FLUX_MODELS_DIR" in where.note
    assert any(str(models) in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
