"""Data checks before any compute, and task registration: fast, no model loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from PIL import Image

from pipelines.tasks import load_task_table
from tests.training_support import red_photos, zip_folder
from training import DatasetError, TrainingConfigError, load_dataset, preset, register_task


def _bad_folder(tmp_path):
    folder = red_photos(tmp_path / "photos", n=4)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (folder / "notes.pdf").write_bytes(b"%PDF-1.4 not a photo")
    Image.new("RGB", (20, 20), "red").save(folder / "tiny.png")
    Image.open(folder / "photo_1.png").save(folder / "photo_1_copy.bmp")  # same pixels, other format
    (folder / "lonely.txt").write_text("a caption whose photo was forgotten", encoding="utf-8")
    (folder / ".DS_Store").write_bytes(b"\0\0")
    return folder


def test_every_bad_file_is_named_with_its_reason(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset(_bad_folder(tmp_path), min_side=32)
    found = {(p.file, p.reason) for p in err.value.problems}
    assert found == {("broken.jpg", "unreadable"), ("notes.pdf", "not_an_image"), ("tiny.png", "too_small"),
                     ("photo_1_copy.bmp", "duplicate"), ("lonely.txt", "caption_without_image")}
    for name in ("broken.jpg", "notes.pdf", "tiny.png", "photo_1_copy.bmp", "lonely.txt"):
        assert name in err.value.message
    assert "photo_1.png" in err.value.message  # the duplicate names its original
    assert err.value.param == "photos" and err.value.type == "invalid_dataset"


def test_skip_bad_trains_on_the_rest_and_reports_what_was_skipped(tmp_path):
    data = load_dataset(_bad_folder(tmp_path), min_side=32, skip_bad=True)
    assert [p.name for p in data.photos] == [f"photo_{i}.png" for i in range(4)]
    assert len(data.problems) == 5 and data.ignored == [".DS_Store"]


def test_too_few_usable_images_is_refused_even_when_skipping(tmp_path):
    folder = red_photos(tmp_path / "p", n=2)
    (folder / "x.jpg").write_bytes(b"junk")
    with pytest.raises(DatasetError, match=r"has 2 usable image\(s\); at least 4"):
        load_dataset(folder, min_side=32, skip_bad=True)


def test_zip_and_folder_give_the_same_dataset_and_captions_are_read(tmp_path):
    folder = red_photos(tmp_path / "p", n=4)
    (folder / "photo_0.txt").write_text("ohwx  person,\n red background", encoding="utf-8")
    a = load_dataset(folder, min_side=32)
    b = load_dataset(zip_folder(folder, tmp_path / "p.zip"), min_side=32)
    assert a.hash == b.hash and a.captioned == 1
    assert a.photos[0].caption == "ohwx person, red background"


def test_not_a_zip_and_missing_path_are_refused(tmp_path):
    (tmp_path / "fake.zip").write_bytes(b"nope")
    with pytest.raises(DatasetError, match="not a readable zip"):
        load_dataset(tmp_path / "fake.zip")
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "absent")


def test_options_are_validated_with_the_parameter_named():
    with pytest.raises(TrainingConfigError) as err:
        preset("bad name!", "ohwx", demo=True)
    assert err.value.param == "name"
    with pytest.raises(TrainingConfigError) as err:
        preset("ok", "ohwx", demo=False, resolutions=(500,))
    assert err.value.param == "resolution"
    gpu = preset("ok", "ohwx", demo=False)
    assert (gpu.rank, gpu.alpha, gpu.steps, gpu.lr, gpu.resolutions, gpu.caption_dropout) == \
        (16, 16.0, 1000, 1e-4, (512, 768, 1024), 0.05)


TABLE = """# my table: keep this comment
[tasks.base]
description = "no LoRA"   # inline comment
lora = ""
lora_alpha = 0.0

# next task
[tasks.other]
lora = ""
lora_alpha = 0.0
"""


def test_register_task_appends_keeps_comments_and_refuses_to_overwrite(tmp_path):
    f = tmp_path / "tasks.toml"
    f.write_text(TABLE, encoding="utf-8")
    register_task(f, "anna", lora="lora/anna", trigger="ohwx woman", strength=0.9, size=1024)
    text = f.read_text(encoding="utf-8")
    assert text.startswith(TABLE.rstrip("\n")) and "# inline comment" in text
    task = load_task_table(f).get("anna")
    assert (task.lora, task.lora_alpha, task.trigger_words, task.width) == ("lora/anna", 0.9, ("ohwx woman",), 1024)
    with pytest.raises(TrainingConfigError, match="already exists"):
        register_task(f, "anna", lora="lora/anna2", trigger="x")
    register_task(f, "base", lora="lora/anna", trigger="ohwx woman", overwrite=True)
    table = load_task_table(f)
    assert table.get("base").lora == "lora/anna" and table.get("other").lora is None
    assert "# next task" in f.read_text(encoding="utf-8") and list(table.tasks) == ["base", "other", "anna"]


def test_cli_refuses_bad_data_naming_the_files_before_loading_a_model(tmp_path):
    folder = _bad_folder(tmp_path)
    env = {**os.environ, "FLUX_MODELS_DIR": str(tmp_path / "models")}
    out = subprocess.run([sys.executable, "-m", "cli", "train", str(folder), "--name", "x", "--trigger", "ohwx"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 2, out.stderr
    assert "error (invalid_dataset)" in out.stderr
    for name in ("broken.jpg", "notes.pdf", "tiny.png", "photo_1_copy.bmp", "lonely.txt"):
        assert name in out.stderr
    assert not (tmp_path / "models" / "lora" / "x").exists()
