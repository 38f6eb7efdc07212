"""Corrupted weights are never served silently (issue 8 item 7).

Before: flipping 4 KiB inside the demo transformer, T5 or LoRA weights, the server became ready and drew
different pixels with no warning; a deleted demo ``flux1-dev`` folder said to ``huggingface-cli download``
into our cache. Now the demo cache is checked against the manifest written when it was built, and rebuilt
with a warning naming the files; a real (user's) model folder is checked cheaply and the error names the file.
Demo tests work on a COPY of the cache (``demo_cache_dir`` in a tmp folder), never on the shared one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil

import pytest

from pipelines.demo_model import MANIFEST, ensure_demo_model, verify_demo_model
from pipelines.engine import FluxEngine
from pipelines.errors import ModelUnavailable
from pipelines.model_check import check_model_folder
from pipelines.model_source import ModelSource, load_pipeline
from pipelines.types import GenerationRequest
from tests.conftest import SMALL, make_settings

TRANSFORMER = "flux1-dev/transformer/diffusion_pytorch_model.safetensors"
T5 = "flux1-dev/text_encoder_2/model.safetensors"
LORA = "lora/host_person/pytorch_lora_weights.safetensors"
HINT = "FIX-IT-HINT"


def _flip_4k(path) -> None:
    """Invert 4 KiB in the middle of the file (inside the tensor data, the header stays valid)."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4096] = bytes(b ^ 0xFF for b in data[mid:mid + 4096])
    path.write_bytes(bytes(data))


@pytest.fixture()
def cache_copy(demo_root, tmp_path):
    """A private copy of the shared demo cache, at the folder name the code expects."""
    cache = tmp_path / "cache"
    shutil.copytree(demo_root, cache / demo_root.name)
    return cache


# ---------------------------------------------------------------- the demo cache (ours)
def test_demo_cache_carries_a_manifest_of_every_file(demo_root):
    manifest = json.loads((demo_root / MANIFEST).read_text())["files"]
    files = {p.relative_to(demo_root).as_posix() for p in demo_root.rglob("*") if p.is_file()}
    assert set(manifest) == files - {MANIFEST, "COMPLETE"}
    assert {TRANSFORMER, T5, LORA} <= set(manifest)
    for rel, want in manifest.items():
        assert hashlib.sha256((demo_root / rel).read_bytes()).hexdigest() == want["sha256"], rel
    assert verify_demo_model(demo_root) == []


def test_flipped_weights_in_the_demo_cache_are_named_and_rebuilt(engine, cache_copy, demo_root, caplog):
    root = cache_copy / demo_root.name
    for rel in (TRANSFORMER, T5, LORA):
        _flip_4k(root / rel)
    caplog.set_level(logging.WARNING, logger="pipelines")
    damaged = FluxEngine.from_settings(make_settings(demo_cache_dir=cache_copy))

    warning = " ".join(r.getMessage() for r in caplog.records if "DAMAGED" in r.getMessage())
    for rel in (TRANSFORMER, T5, LORA):
        assert f"{rel} does not match its sha256" in warning
    assert verify_demo_model(root) == []
    req = GenerationRequest(prompt="portrait photo", task="host_face", seed=7, **SMALL)
    assert damaged.generate(req).image.tobytes() == engine.generate(req).image.tobytes()


def test_deleted_demo_flux1_dev_folder_is_rebuilt_not_downloaded(cache_copy, demo_root, caplog):
    root = cache_copy / demo_root.name
    shutil.rmtree(root / "flux1-dev")
    caplog.set_level(logging.WARNING, logger="pipelines")
    assert ensure_demo_model(cache_copy) == root
    text = caplog.text
    assert "flux1-dev/model_index.json is missing" in text and "Rebuilding" in text
    assert "huggingface-cli" not in text
    assert verify_demo_model(root) == [] and (root / "flux1-dev" / "model_index.json").is_file()
    assert [p.name for p in cache_copy.iterdir()] == [root.name]  # nothing left aside


def test_damaged_demo_folder_at_load_says_how_to_fix_our_cache_not_download(tmp_path):
    source = ModelSource(path=tmp_path / "flux1-dev", models_root=tmp_path, demo=True, model_type="flux1")
    (tmp_path / "flux1-dev").mkdir()
    with pytest.raises(ModelUnavailable) as caught:
        load_pipeline(source, "cpu", None)
    assert "demo model cache" in caught.value.message and "huggingface-cli" not in caught.value.message


# ---------------------------------------------------------------- a real model folder (the user's)
@pytest.fixture()
def user_model(demo_root, tmp_path):
    """A user's FLUX folder made of the demo files."""
    folder = tmp_path / "models" / "flux1-dev"
    shutil.copytree(demo_root / "flux1-dev", folder)
    return folder


def test_intact_model_folder_passes(user_model):
    check_model_folder(user_model, HINT)


def test_missing_component_folder_is_named(user_model):
    shutil.rmtree(user_model / "vae")
    with pytest.raises(ModelUnavailable, match=r"vae is missing \(model_index.json names the component 'vae'"):
        check_model_folder(user_model, HINT)


def test_truncated_weights_are_named(user_model):
    path = user_model / "text_encoder_2" / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-4096])
    with pytest.raises(ModelUnavailable) as caught:
        check_model_folder(user_model, HINT)
    assert str(path) in caught.value.message and "truncated" in caught.value.message and HINT in caught.value.message


def test_overwritten_safetensors_header_is_named(user_model):
    path = user_model / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[8:8 + 64] = b"\x00" * 64
    path.write_bytes(bytes(data))
    with pytest.raises(ModelUnavailable, match="header does not parse") as caught:
        check_model_folder(user_model, HINT)
    assert str(path) in caught.value.message


def test_missing_weights_file_is_named(user_model):
    (user_model / "transformer" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match=r"transformer has a config.json but no weights file"):
        check_model_folder(user_model, HINT)


def test_shard_missing_from_a_weight_index_is_named(user_model):
    (user_model / "transformer" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {"a": "diffusion_pytorch_model.safetensors",
                                        "b": "diffusion_pytorch_model-00002-of-00002.safetensors"}}))
    with pytest.raises(ModelUnavailable, match=r"diffusion_pytorch_model-00002-of-00002.safetensors is missing "
                                               r"\(diffusion_pytorch_model.safetensors.index.json lists it\)"):
        check_model_folder(user_model, HINT)


def test_engine_refuses_a_truncated_real_model_naming_the_file_and_the_download(user_model):
    path = user_model / "vae" / "diffusion_pytorch_model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    settings = make_settings(model_path=user_model, models_dir=user_model.parent)
    with pytest.raises(ModelUnavailable) as caught:
        FluxEngine.from_settings(settings, with_tasks=False)
    assert str(path) in caught.value.message
    assert f"huggingface-cli download black-forest-labs/FLUX.1-dev --local-dir {user_model}" in caught.value.message
