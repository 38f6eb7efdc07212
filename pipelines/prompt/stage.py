"""The prompt stage: what a prompt becomes before the text encoders read it (glossary, then translation).

Why: our users write Chinese; FLUX.1's T5 encoder, the one that carries most of a prompt's meaning, maps
Chinese to its unknown token, so without this stage the picture is steered by CLIP's weak reading alone.
One small interface, ``PromptStage.apply(prompt, mode)``, called once by ``FluxEngine.plan`` before the
task's trigger words and template are added (those are never translated). Modes (a request's ``translate``):

- ``off``: the prompt goes to the encoders exactly as typed (the behaviour before this stage existed).
- ``glossary``: the glossary only (``models/glossary.toml``): deterministic, offline, every model.
- ``auto`` (default): the glossary first; then every run of text the model's own T5 tokenizer still maps
  to its unknown token is given, run by run, to the translation model (if one is configured) and replaced
  by its English. Text T5 can read (English, numbers, glossary output) is never sent to the translator,
  so an English prompt comes out unchanged and a glossary term is never re-translated. With no translator,
  what is left stays as typed and the result says so.

The result (``StagedPrompt``) records everything: the original, the glossary terms applied, each translated
run with its English, which translator did it, and notes for the result's warnings.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from pipelines.prompt.glossary import Glossary, join_pieces, load_glossary
from pipelines.prompt.translator import Translator, load_translator

logger = logging.getLogger(__name__)

TRANSLATE_MODES = ("auto", "glossary", "off")


@dataclass(frozen=True)
class StagedPrompt:
    mode: str
    original: str  # as the user typed it
    english: str  # after the stage, before the task's trigger words and template
    glossary_terms: tuple[tuple[str, str], ...] = ()
    translated: tuple[tuple[str, str], ...] = ()  # (text, English) per run the translator handled
    translator: str | None = None  # label of the translator that was used; None: not used
    notes: tuple[str, ...] = ()  # said in the result's warnings and in the log


class PromptStage:
    """Glossary + optional translator + the model's T5 tokenizer (to find what T5 cannot read)."""

    def __init__(self, glossary: Glossary, translator: Translator | None, t5_tokenizer) -> None:
        self.glossary = glossary
        self.translator = translator
        # a private copy: the pipeline's tokenizer changes its truncation state while encoding, and the
        # HTTP app plans requests on another thread than the one that encodes them
        self.t5_tokenizer = copy.deepcopy(t5_tokenizer)

    def apply(self, prompt: str, mode: str) -> StagedPrompt:
        if mode not in TRANSLATE_MODES:
            raise ValueError(f"unknown translate mode {mode!r}")
        if mode == "off":
            return StagedPrompt(mode=mode, original=prompt, english=prompt)
        glossed = self.glossary.apply(prompt)
        text = glossed.text
        if mode == "glossary":
            return StagedPrompt(mode=mode, original=prompt, english=text, glossary_terms=glossed.terms)
        spans = self.unreadable_spans(text)
        if not spans:
            return StagedPrompt(mode=mode, original=prompt, english=text, glossary_terms=glossed.terms)
        left = ", ".join(repr(text[a:b]) for a, b in spans)
        if self.translator is None:
            note = (f"translate=auto: no translation model is configured, so {left} stays as typed and T5 cannot "
                    "read it; add the terms to the glossary (models/glossary.toml) or set FLUX_TRANSLATOR_PATH "
                    "(see README)")
            return StagedPrompt(mode=mode, original=prompt, english=text, glossary_terms=glossed.terms,
                                notes=(note,))
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
                notes.append(f"the translator returned nothing for {source!r}; it stays as typed")
            pos = b
        if pos < len(text):
            pieces.append((text[pos:], False))
        if self.translator.demo:
            notes.append("demo translator: random weights, so " + "; ".join(f"{s!r} became {e!r}" for s, e in translated)
                         + " (unrelated to the prompt); for real translation set FLUX_TRANSLATOR_PATH (see README)")
        return StagedPrompt(mode=mode, original=prompt, english=join_pieces(pieces), glossary_terms=glossed.terms,
                            translated=tuple(translated), translator=self.translator.label, notes=tuple(notes))

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


def build_prompt_stage(settings, t5_tokenizer, engine_device: str, demo: bool) -> PromptStage:
    """The glossary and translator the settings name; on the demo model, the demo translator by default."""
    explicit = settings.glossary_file is not None
    path = settings.glossary_file if explicit else Path(settings.models_dir) / "glossary.toml"
    glossary = load_glossary(path, explicit=explicit)
    if glossary.source is None:
        logger.warning("no glossary at %s: Chinese terms reach T5 only through a translator, if one is set "
                       "(FLUX_GLOSSARY_FILE)", path)
    else:
        logger.info("glossary: %d terms from %s", len(glossary), glossary.source)
    device = engine_device if settings.translator_device == "engine" else "cpu"
    translator = None
    if settings.translator_path is not None:
        translator = load_translator(settings.translator_path, device=device,
                                     cache_size=settings.translator_cache_size)
    elif demo and settings.demo_translator:
        from pipelines.prompt.demo_translator import DEMO_TRANSLATOR_LABEL, ensure_demo_translator

        root = ensure_demo_translator(settings.demo_cache_dir)
        translator = load_translator(root, device=device, label=DEMO_TRANSLATOR_LABEL, demo=True,
                                     cache_size=settings.translator_cache_size)
        logger.warning("DEMO TRANSLATOR: no FLUX_TRANSLATOR_PATH set, so on the demo model Chinese text the glossary "
                       "does not cover is 'translated' by a tiny random model (random English words) from %s; "
                       "FLUX_DEMO_TRANSLATOR=false turns it off", root)
    else:
        logger.info("no translation model (FLUX_TRANSLATOR_PATH unset): translate=auto applies the glossary only")
    return PromptStage(glossary, translator, t5_tokenizer)
