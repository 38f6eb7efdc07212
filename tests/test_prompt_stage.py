"""The prompt stage in the engine: what is encoded is the English the result reports, translate=off is
today's behaviour bit for bit, the translator path runs (on the demo translation model), trigger words and
templates are added after translation, and every result (info, PNG) records what was sent."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.engine import FluxEngine
from pipelines.errors import InvalidRequest
from pipelines.prompt.glossary import CJK, load_glossary
from pipelines.prompt.stage import PromptStage
from pipelines.prompt.translator import Translator
from pipelines.tasks import TaskConfig, TaskTable
from tests.engine_helpers import bare_call, pixels, request

GUIDE_PROMPT = "科普主持人，专业形象，微笑，正式着装"
UNCOVERED = "微笑着的科普主持人"  # 着的 is not in the glossary: auto mode hands it to the translator


def test_translate_off_is_todays_behaviour_bit_for_bit(engine, bare_pipe):
    result = engine.generate(request(prompt=GUIDE_PROMPT, translate="off"))
    assert np.array_equal(pixels(result), bare_call(bare_pipe, prompt=GUIDE_PROMPT))
    info = result.info
    assert info.prompt == info.prompt_original == info.prompt_english == info.prompt_t5 == GUIDE_PROMPT
    assert (info.glossary_terms, info.translated, info.translator) == ([], [], None)
    assert info.t5_unknown_before == info.t5_unknown_after == 1.0


def test_glossary_english_is_what_the_pipeline_encodes(engine, bare_pipe):
    result = engine.generate(request(prompt=GUIDE_PROMPT))  # translate=auto by default
    info = result.info
    assert info.translate == "auto"
    assert info.prompt == info.prompt_english == "science show host, professional look, smiling, formal attire"
    assert info.prompt_clip == info.prompt_t5 == info.prompt
    assert info.glossary_terms[0] == ["科普主持人", "science show host"] and len(info.glossary_terms) == 4
    assert info.translator is None  # the glossary covered everything
    assert (info.t5_unknown_before, info.t5_unknown_after) == (1.0, 0.0)
    same = pixels(engine.generate(request(prompt=info.prompt_english, translate="off")))
    assert np.array_equal(pixels(result), same)
    assert np.array_equal(pixels(result), bare_call(bare_pipe, prompt=info.prompt))


def test_translator_path_runs_on_the_demo_translation_model(engine, bare_pipe):
    result = engine.generate(request(prompt=UNCOVERED))
    info = result.info
    assert info.translator is not None and "demo translator" in info.translator and "random" in info.translator
    (source, english), = info.translated
    assert source == "着的" and english and english.isascii()
    assert info.prompt == f"smiling {english} science show host"
    assert info.t5_unknown_before == 1.0 and info.t5_unknown_after == 0.0
    assert any(w.startswith("demo translator: random weights") for w in info.warnings)  # loudly labelled
    assert np.array_equal(pixels(result), bare_call(bare_pipe, prompt=info.prompt))


def test_translations_are_cached_per_text(engine):
    translator = engine.prompt_stage.translator
    engine.plan(request(prompt="严肃的主持人"))
    calls = translator.calls
    again = engine.plan(request(prompt="严肃的主持人"))
    assert translator.calls == calls and again.staged.translated[0][0] == "的"


def test_glossary_mode_never_calls_the_translator(engine):
    calls = engine.prompt_stage.translator.calls
    result = engine.generate(request(prompt="微笑着的人", translate="glossary"))
    assert result.info.prompt == "smiling 着的人" and result.info.translated == []
    assert engine.prompt_stage.translator.calls == calls
    assert 0 < result.info.t5_unknown_after < 1.0


def test_english_prompt_is_unchanged_in_auto_mode(engine):
    plan = engine.plan(request(prompt="a portrait photo of a science host"))
    assert plan.prompt == "a portrait photo of a science host" and plan.staged.translator is None


def test_unknown_translate_mode_names_the_field(engine):
    with pytest.raises(InvalidRequest, match="`translate` must be one of auto, glossary, off") as exc:
        engine.plan(request(translate="english"))
    assert exc.value.param == "translate"


def test_trigger_words_and_template_come_after_translation_and_are_never_translated(engine, settings):
    task = TaskConfig(name="zh", description="", lora=None, lora_alpha=0.0, trigger_words=("科普主持人",),
                      prompt_template="{prompt}，演播室背景", width=64, height=64, num_inference_steps=2,
                      guidance_scale=None)
    own = FluxEngine(engine.pipe, engine.source, settings, "cpu", engine.dtype,
                     TaskTable(source=Path("<test>"), tasks={"zh": task}), adapters=engine.adapters,
                     prompt_stage=engine.prompt_stage)
    plan = own.plan(request(prompt="科普主持人，微笑", task="zh"))
    assert plan.prompt == "科普主持人, science show host, smiling，演播室背景"
    assert plan.prompt_as_typed == "科普主持人, 科普主持人，微笑，演播室背景"


def test_auto_without_a_translator_says_what_stays_unreadable(engine):
    stage = PromptStage(engine.prompt_stage.glossary, None, engine.pipe.tokenizer_2)
    staged = stage.apply(UNCOVERED, "auto")
    assert staged.english == "smiling 着的 science show host" and staged.translator is None
    (note,) = staged.notes
    assert "no translation model is configured" in note and "'着的'" in note and "FLUX_TRANSLATOR_PATH" in note


def test_unreadable_runs_split_by_spaces_are_one_run(engine):
    assert engine.prompt_stage.unreadable_spans("host 着 的 smile 人") == [(5, 8), (15, 16)]


def test_translation_cache_is_bounded(engine):
    base = engine.prompt_stage.translator
    small = Translator(base.model, base.tokenizer, label="t", device="cpu", cache_size=2)
    for text in ("着", "的", "人"):
        small.translate(text)
    assert list(small._cache) == ["的", "人"] and small.calls == 3
    small.translate("着")  # evicted: translated again, same words (greedy decoding)
    assert small.calls == 4


def test_png_metadata_records_what_was_sent(engine):
    result = engine.generate(request(prompt=UNCOVERED))
    meta = json.loads(Image.open(io.BytesIO(result.png_bytes())).text["flux-service"])
    assert meta["prompt_original"] == UNCOVERED and meta["prompt"] == result.info.prompt
    assert meta["glossary_terms"] == [["微笑", "smiling"], ["科普主持人", "science show host"]]
    assert meta["translated"][0][0] == "着的" and "demo translator" in meta["translator"]
    assert meta["t5_unknown_before"] == 1.0 and meta["t5_unknown_after"] == 0.0
    assert not CJK.search(meta["prompt_t5"])


def test_starter_glossary_is_what_the_engine_loaded(engine):
    shipped = load_glossary(Path(__file__).resolve().parents[1] / "models" / "glossary.toml", explicit=True)
    assert engine.prompt_stage.glossary.terms == shipped.terms
