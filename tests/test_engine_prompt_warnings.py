"""Prompt diagnostics: what CLIP and T5 will not see is said in the result and in the log."""

from __future__ import annotations

import logging

import pytest

from pipelines.engine import FluxEngine
from tests.conftest import make_settings
from tests.engine_helpers import request

LONG_ENGLISH = ("a portrait photo of a friendly science host in a modern laboratory with books and a microscope, "
                "soft natural light, detailed, sharp focus, ") * 6
CHINESE = "科普主持人，专业形象，微笑，正式着装"


def _prompt_warnings(result) -> list[str]:
    return [w for w in result.info.warnings if not w.startswith("demo model")]


def _logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "pipelines.engine" and r.levelno == logging.WARNING]


def test_long_english_prompt_warns_that_clip_truncated_it(engine, caplog):
    result = engine.generate(request(prompt=LONG_ENGLISH))
    warnings = _prompt_warnings(result)
    assert len(warnings) == 1 and warnings[0].startswith("CLIP truncated the prompt to 77 tokens")
    assert any("CLIP truncated" in m for m in _logged(caplog))


@pytest.fixture(scope="module")
def short_t5_engine(settings):
    return FluxEngine.from_settings(make_settings(max_sequence_length=16, demo_cache_dir=settings.demo_cache_dir),
                                    with_tasks=False)


def test_prompt_longer_than_max_sequence_length_warns_that_t5_truncated_it(short_t5_engine, caplog):
    result = short_t5_engine.generate(request(prompt="a portrait photo of a science host " * 4))
    warnings = _prompt_warnings(result)
    assert len(warnings) == 1
    assert warnings[0].startswith("T5 truncated the prompt to max_sequence_length=16 tokens")
    assert any("T5 truncated" in m for m in _logged(caplog))


def test_chinese_prompt_sent_as_typed_warns_about_t5_unknown_tokens(engine, caplog):
    result = engine.generate(request(prompt=CHINESE, translate="off"))  # as typed: no glossary, no translator
    warnings = _prompt_warnings(result)
    assert len(warnings) == 1 and warnings[0].startswith("T5 mapped 100% of the prompt to its unknown token")
    assert CHINESE[:5] in warnings[0]
    assert any("unknown token" in m for m in _logged(caplog))


def test_mixed_prompt_reports_the_unknown_fraction(engine):
    result = engine.generate(request(prompt="科普主持人 portrait photo", translate="off"))  # 5 of 18 visible chars
    (warning,) = _prompt_warnings(result)
    assert warning.startswith("T5 mapped 28% of the prompt")


def test_short_english_prompt_has_no_prompt_warnings(engine, caplog):
    result = engine.generate(request(prompt="a portrait photo of a science host"))
    assert _prompt_warnings(result) == []
    assert not any(m.startswith("prompt:") for m in _logged(caplog))
