"""The prompt stage: what a prompt becomes before the text encoders read it (glossary, then a translation
model or the dictionary).

Why: our users write Chinese; FLUX.1's T5 encoder, the one that carries most of a prompt's meaning, maps
Chinese to its unknown token, so without this stage the picture is steered by CLIP's weak reading alone.
One small interface, ``PromptStage.apply(prompt, mode)``, called once by ``FluxEngine.plan`` before the
task's trigger words and template are added (those are never translated). Modes (a request's ``translate``):

- ``off``: the prompt goes to the encoders exactly as typed (the behaviour before this stage existed).
- ``glossary``: the glossary only (``models/glossary.toml``): deterministic, offline, every model.
- ``auto`` (default): the glossary first; then, if the model's own T5 tokenizer still maps some of the text
  to its unknown token: with a translation model (``models/translator``, auto-detected, or
  ``FLUX_TRANSLATOR_PATH``) each such run is given to the model and replaced by its English; without one the
  dictionary stage (``dictionary.py``: jieba + CC-CEDICT, on by default, offline) translates the Chinese
  the glossary left, word by word. Text T5 can read (English, numbers, glossary output) is never sent to a
  translator, so an English prompt comes out unchanged and a glossary term is never re-translated.

With the dictionary on, a glossary term never matches inside a longer word the dictionary knows (地球 is not
matched in 地球仪), in both ``glossary`` and ``auto``. The result (``StagedPrompt``) records everything: the
original, each word or run with the stage that translated it (glossary, dictionary, model) and its English,
the glossary terms applied, each run the model translated, which model and dictionary were used, and notes
for the result's warnings.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from pipelines.prompt.dictionary import Dictionary
from pipelines.prompt.glossary import Glossary, join_pieces, load_glossary
from pipelines.prompt.translator import Translator, load_translator

logger = logging.getLogger(__name__)

TRANSLATE_MODES = ("auto", "glossary", "off")
#: the stage names a result's ``words`` use
STAGES = ("glossary", "dictionary", "model")


@dataclass(frozen=True)
class StagedPrompt:
    mode: str
    original: str  # as the user typed it
    english: str  # after the stage, before the task's trigger words and template
    glossary_terms: tuple[tuple[str, str], ...] = ()
    translated: tuple[tuple[str, str], ...] = ()  # (text, English) per run the translation model handled
    translator: str | None = None  # label of the translation model that was used; None: not used
    notes: tuple[str, ...] = ()  # said in the result's warnings and in the log
    #: (source, English, stage) per word or run that was replaced, stage one of ``STAGES``; English "": the
    #: dictionary dropped a word English does not need (的, 了 ...). Prompt order (with a model: the glossary's
    #: terms, then the model's runs).
    words: tuple[tuple[str, str, str], ...] = ()
    dictionary: str | None = None  # label of the dictionary when it translated something; None: not used


class PromptStage:
    """Glossary + optional translation model + optional dictionary + the model's T5 tokenizer (to find what
    T5 cannot read)."""

    def __init__(self, glossary: Glossary, translator: Translator | None, t5_tokenizer,
                 dictionary: Dictionary | None = None) -> None:
        self.glossary = glossary
        self.translator = translator
        self.dictionary = dictionary
        # a private copy: the pipeline's tokenizer changes its truncation state while encoding, and the
        # HTTP app plans requests on another thread than the one that encodes them
        self.t5_tokenizer = copy.deepcopy(t5_tokenizer)

    def apply(self, prompt: str, mode: str) -> StagedPrompt:
        if mode not in TRANSLATE_MODES:
            raise ValueError(f"unknown translate mode {mode!r}")
        if mode == "off":
            return StagedPrompt(mode=mode, original=prompt, english=prompt)
        protected = self.dictionary.protected(prompt) if self.dictionary is not None else frozenset()
        glossed = self.glossary.apply(prompt, protected)
        text = glossed.text
        words = tuple((src, en, "glossary") for src, en in glossed.terms)
        done = StagedPrompt(mode=mode, original=prompt, english=text, glossary_terms=glossed.terms, words=words)
        if mode == "glossary":
            return done
        spans = self.unreadable_spans(text)
        if not spans:
            return done
        if self.translator is not None:
            return self._with_model(done, spans)
        if self.dictionary is not None:
            return self._with_dictionary(done, glossed.hits)
        left = ", ".join(repr(text[a:b]) for a, b in spans)
        note = (f"translate=auto: no translation model and the dictionary is off (FLUX_DICTIONARY=false), so {left} "
                "stays as typed and T5 cannot read it; add the terms to the glossary (models/glossary.toml), turn "
                "the dictionary on, or put a translation model in models/translator (see README)")
        return replace(done, notes=(note,))

    def _with_dictionary(self, done: StagedPrompt, hits) -> StagedPrompt:
        rendered = self.dictionary.render(done.original, hits)
        english = rendered.english
        notes = []
        spans = self.unreadable_spans(english)
        if spans:
            left = ", ".join(repr(english[a:b]) for a, b in spans)
            notes.append(f"translate=auto: the dictionary has no English for {left}; it stays as typed and T5 cannot "
                         "read it (add it to the glossary, models/glossary.toml)")
        return StagedPrompt(mode=done.mode, original=done.original, english=english,
                            glossary_terms=done.glossary_terms, words=rendered.words, notes=tuple(notes),
                            dictionary=self.dictionary.label)

    def _with_model(self, done: StagedPrompt, spans: list[tuple[int, int]]) -> StagedPrompt:
        text = done.english
        pieces: list[tuple[str, bool]] = []
        translated: list[tuple[str, str]] = []
        notes: list[str] = []
        pos = 0
        for a, b in spans:
            source = text[a:b]
            english = self.translator.translate(source)
            if pos < a:
                pieces.append((text[pos:a], False))
            if english:
                pieces.append((english, True))
                translated.append((source, english))
            else:
                pieces.append((source, False))
                notes.append(f"the translation model returned nothing for {source!r}; it stays as typed")
            pos = b
        if pos < len(text):
            pieces.append((text[pos:], False))
        if self.translator.demo:
            notes.append("random translator: random weights, so " + "; ".join(f"{s!r} became {e!r}" for s, e in translated)
                         + " (unrelated to the prompt); for real translation put a model in models/translator (see README)")
        words = done.words + tuple((s, e, "model") for s, e in translated)
        return StagedPrompt(mode=done.mode, original=done.original, english=join_pieces(pieces),
                            glossary_terms=done.glossary_terms, translated=tuple(translated),
                            translator=self.translator.label, notes=tuple(notes), words=words)

    def unreadable_spans(self, text: str) -> list[tuple[int, int]]:
        """Runs of characters T5 maps to its unknown token (runs split only by spaces are merged)."""
        tok = self.t5_tokenizer
        enc = tok(text, truncation=False, return_offsets_mapping=True)
        unknown = [False] * len(text)
        for tid, (start, end) in zip(enc["input_ids"], enc["offset_mapping"]):
            if tid == tok.unk_token_id:
                for i in range(start, end):
                    unknown[i] = not text[i].isspace()
        spans: list[tuple[int, int]] = []
        i = 0
        while i < len(text):
            if not unknown[i]:
                i += 1
                continue
            j = i
            while j < len(text) and (unknown[j] or text[j].isspace()):
                j += 1
            end = j
            while end > i and text[end - 1].isspace():
                end -= 1
            if spans and not text[spans[-1][1]:i].strip():
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((i, end))
            i = j
        return spans


def find_translator_path(settings) -> Path | None:
    """``FLUX_TRANSLATOR_PATH`` if set, else ``<models_dir>/translator`` if that folder is there (like flux1-dev)."""
    if settings.translator_path is not None:
        return Path(settings.translator_path)
    default = Path(settings.models_dir) / "translator"
    return default if default.is_dir() else None


def build_prompt_stage(settings, t5_tokenizer, engine_device: str, demo: bool) -> PromptStage:
    """The glossary, the translation model (set or found in models/translator) and the dictionary (on unless
    ``FLUX_DICTIONARY=false``); the demo model gets the same (no random translator)."""
    explicit = settings.glossary_file is not None
    path = settings.glossary_file if explicit else Path(settings.models_dir) / "glossary.toml"
    glossary = load_glossary(path, explicit=explicit)
    if glossary.source is None:
        logger.warning("no glossary at %s: Chinese terms reach T5 only through the dictionary or a translation "
                       "model (FLUX_GLOSSARY_FILE)", path)
    else:
        logger.info("glossary: %d terms from %s", len(glossary), glossary.source)
    device = engine_device if settings.translator_device == "engine" else "cpu"
    translator = None
    translator_path = find_translator_path(settings)
    if translator_path is not None:
        translator = load_translator(translator_path, device=device, cache_size=settings.translator_cache_size)
        logger.info("translate=auto: glossary, then the translation model %s for what T5 cannot read",
                    translator_path)
    dictionary = Dictionary(settings.dictionary_cache_dir) if settings.dictionary else None
    if translator is None and dictionary is not None:
        logger.info("translate=auto: glossary, then the dictionary (jieba + CC-CEDICT, loaded on first use) for "
                    "the Chinese it leaves; for fluent English put a translation model in %s (see README)",
                    Path(settings.models_dir) / "translator")
    elif translator is None:
        logger.warning("translate=auto applies the glossary only: FLUX_DICTIONARY=false and no translation model "
                       "(%s absent, FLUX_TRANSLATOR_PATH unset)", Path(settings.models_dir) / "translator")
    return PromptStage(glossary, translator, t5_tokenizer, dictionary)
