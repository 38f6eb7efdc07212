"""Which model serves: the demo model is deterministic and labelled; a missing real model says how to get it."""

from __future__ import annotations

import hashlib

import pytest

from pipelines.demo_model import build_demo_model
from pipelines.engine import FluxEngine
from pipelines.errors import ModelUnavailable
from tests.conftest import make_settings

DOWNLOAD = "huggingface-cli download black-forest-labs/FLUX.1-dev --local-dir"


def _digests(root) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_demo_model_builds_the_same_bytes_twice(tmp_path):
    build_demo_model(tmp_path / "a")
    build_demo_model(tmp_path / "b")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert "lora/host_person/adapter_config.json" in a and "flux1-dev/model_index.json" in a
    assert a == b


def test_session_demo_model_matches_a_fresh_build(demo_root, tmp_path):
    build_demo_model(tmp_path / "fresh")
    assert _digests(tmp_path / "fresh") == _digests(demo_root)


def test_configured_model_path_that_does_not_exist_says_how_to_download(tmp_path):
    with pytest.raises(ModelUnavailable) as caught:
        FluxEngine.from_settings(make_settings(model_path=tmp_path / "flux1-dev"))
    assert str(tmp_path / "flux1-dev") in caught.value.message
    assert DOWNLOAD in caught.value.message


def test_flux_pipeline_with_a_missing_non_default_path_says_how_to_download(tmp_path):
    from pipelines.flux_pipeline import FluxPipeline

    with pytest.raises(ModelUnavailable, match=DOWNLOAD):
        FluxPipeline(model_path=tmp_path / "weights", settings=make_settings())


def test_demo_disabled_and_no_model_raises_model_unavailable(tmp_path):
    settings = make_settings(allow_demo=False, models_dir=tmp_path, tasks_file=None)
    (tmp_path / "tasks.toml").write_text('[tasks.science_background]\nlora = ""\n', encoding="utf-8")
    with pytest.raises(ModelUnavailable) as caught:
        FluxEngine.from_settings(settings)
    assert "FLUX_ALLOW_DEMO=false" in caught.value.message
    assert DOWNLOAD in caught.value.message


def test_demo_model_is_labelled_in_every_result(engine):
    from tests.engine_helpers import request

    info = engine.generate(request()).info
    assert engine.is_demo and info.demo is True and info.model == "demo"
    assert any(w.startswith("demo model:") for w in info.warnings)
