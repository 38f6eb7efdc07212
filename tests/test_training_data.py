"""Data checks before any compute, and task registration: fast, no model loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

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


# ---- issue 17: decompression bombs, names, EXIF orientation ------------------------------------------
_PEAK = """
import resource, sys
from training.dataset import DatasetLimits, load_dataset
from training.errors import DatasetError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    load_dataset(sys.argv[1], min_side=32, limits=DatasetLimits(max_file_bytes=int(sys.argv[2])))
except DatasetError as exc:
    print(exc.type, exc.message)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)  # MiB (Linux: KiB)
"""


def _peak_mib(source, max_file_bytes: int = 100 * 1024**2) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PEAK, str(source), str(max_file_bytes)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    message, peak = out.stdout.rsplit("\n", 2)[:2]
    return message, int(peak)


def test_a_png_bomb_is_refused_from_its_header_without_decoding(tmp_path):
    """13000x13000 1-bit PNG, 20 KB: it took the server from 463 MB to 2.2 GB (issue 17 item 6)."""
    from tests.training_support import png_bomb

    folder = red_photos(tmp_path / "p", n=4)
    (folder / "bomb.png").write_bytes(png_bomb(13000, 13000))
    assert (folder / "bomb.png").stat().st_size < 64 * 1024
    message, peak = _peak_mib(folder)
    assert message.startswith("invalid_dataset") and "bomb.png: 13000x13000" in message
    assert "FLUX_TRAINING_MAX_IMAGE_PIXELS" in message
    assert peak < 50, f"checking the photos grew the process by {peak} MiB"


def test_a_zip_member_is_read_as_a_bounded_stream(tmp_path):
    """A 0.5 MB zip with one 400 MB member peaked at +735 MB before its 422: members are now streamed, one at
    a time, refused past FLUX_TRAINING_MAX_FILE_BYTES (declared or actually read)."""
    folder = red_photos(tmp_path / "p", n=4)
    target = zip_folder(folder, tmp_path / "set.zip")
    with zipfile.ZipFile(target, "a", zipfile.ZIP_DEFLATED) as zf, zf.open("huge.png", "w") as f:
        for _ in range(64):
            f.write(b"\0" * 1024**2)
    assert target.stat().st_size < 1024**2
    message, peak = _peak_mib(target, max_file_bytes=16 * 1024**2)
    assert message.startswith("invalid_dataset") and "huge.png" in message and "FLUX_TRAINING_MAX_FILE_BYTES" in message
    assert peak < 40, f"checking the zip grew the process by {peak} MiB"


def test_too_many_members_or_bytes_in_a_zip_is_dataset_too_large(tmp_path):
    from training.dataset import DatasetLimits
    from training.errors import DatasetTooLarge

    target = zip_folder(red_photos(tmp_path / "p", n=4), tmp_path / "set.zip")
    with pytest.raises(DatasetTooLarge, match="FLUX_TRAINING_MAX_FILES"):
        load_dataset(target, min_side=32, limits=DatasetLimits(max_files=3))
    with pytest.raises(DatasetTooLarge, match="FLUX_TRAINING_MAX_UNPACKED_BYTES"):
        load_dataset(target, min_side=32, limits=DatasetLimits(max_unpacked_bytes=1000))


def test_same_file_name_in_two_zip_folders_keeps_both(tmp_path):
    """Issue 17 item 7: `a/x.png` + `b/x.png` are two photos (captions pair by their full path)."""
    folder = red_photos(tmp_path / "p", n=4)
    target = tmp_path / "set.zip"
    with zipfile.ZipFile(target, "w") as zf:
        for i, p in enumerate(sorted(folder.iterdir())):
            zf.write(p, f"{'ab'[i % 2]}/x{i // 2}.png")
        zf.writestr("a/x0.txt", "ohwx, in a")
    data = load_dataset(target, min_side=32)
    assert [p.name for p in data.photos] == ["a/x0.png", "a/x1.png", "b/x0.png", "b/x1.png"]
    assert [p.caption for p in data.photos] == ["ohwx, in a", "", "", ""]


def test_an_exif_rotated_photo_is_sized_and_cropped_as_seen(tmp_path):
    """Issue 17 item 7: a portrait stored as a rotated landscape was bucketed by its stored size."""
    from tests.training_support import rotated_jpeg
    from training.data_cache import bucket_size, load_pixels

    folder = red_photos(tmp_path / "p", n=3)
    rotated_jpeg(folder / "portrait.jpg", width=96, height=64)
    photo = {p.name: p for p in load_dataset(folder, min_side=32).photos}["portrait.jpg"]
    assert (photo.width, photo.height) == (64, 96)
    w, h = bucket_size(photo.width, photo.height, 64)
    assert h > w  # a portrait bucket
    pixels = load_pixels(photo.data, (w, h))[0]  # (3, H, W) in [-1, 1]
    top, bottom = pixels[:, : h // 3].mean(dim=(1, 2)), pixels[:, -h // 3:].mean(dim=(1, 2))
    assert top[0] > top[2] and bottom[2] > bottom[0]  # red above blue, as seen upright
