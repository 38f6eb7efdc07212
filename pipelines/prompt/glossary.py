"""The prompt glossary (``models/glossary.toml``): the terms our users write again and again, in English.

Why a glossary before any translation model: the same few dozen Chinese terms (科普主持人, 演播室背景,
正式着装 ...) make up most prompts, and each must always reach FLUX as the same English words, on every
machine, offline, with or without a translation model (the demo model included). A machine translator may
render 科普主持人 as "science presenter" today and "popular science host" after an upgrade; the glossary
pins it. It is applied first; a translator only sees what the glossary left.

Matching is deterministic: scanning left to right, at each position the longest glossary term that starts
there wins (演播室背景 before 演播室 before 背景), and replaced text is never scanned again. With the
dictionary stage on (the default), a term never starts or ends inside a longer word the dictionary knows,
as jieba segments the prompt: in 桌上有地球仪, 地球 ("earth") does not match inside 地球仪 ("globe"). Chinese terms
match anywhere (Chinese has no spaces); a term written in Latin letters matches whole words only. Chinese
punctuation (，、。；：！？（）“” and full-width forms) becomes its ASCII form, since T5 maps it to its
unknown token. Text the glossary does not touch is kept byte for byte, so an English prompt comes out
unchanged. Spaces are added only where a replacement would otherwise glue two words together.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import tomllib

from pipelines.errors import ConfigError

#: Chinese punctuation -> ASCII (full-width ASCII forms U+FF01..U+FF5E are mapped by NFKC as well)
PUNCTUATION = {
    "，": ",", "、": ",", "。": ".", "；": ";", "：": ":", "！": "!", "？": "?", "（": "(", "）": ")",
    "“": '"', "”": '"', "‘": "'", "’": "'", "《": '"', "》": '"', "【": "[", "】": "]", "　": " ",
    "…": "...", "～": "~", "—": "-",
}

#: Han ideographs and CJK symbols: a glossary value must not contain them (it would defeat its purpose)
CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


@dataclass(frozen=True)
class Hit:
    """One replacement in the input: a glossary term (``term``) or a punctuation mark made ASCII."""

    start: int
    end: int
    english: str
    term: bool


@dataclass(frozen=True)
class GlossaryResult:
    text: str
    terms: tuple[tuple[str, str], ...]  # (source term, English) in prompt order, each occurrence once
    changed: bool  # False: ``text`` is the input, untouched
    hits: tuple[Hit, ...] = ()  # every replacement with its place in the input (the dictionary stage reads them)


@dataclass
class Glossary:
    source: Path | None  # None: no glossary file (punctuation is still normalised)
    terms: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._max_len = max((len(k) for k in self.terms), default=0)

    def __len__(self) -> int:
        return len(self.terms)

    def apply(self, text: str, protected: frozenset[int] = frozenset()) -> GlossaryResult:
        """Longest match first, left to right; returns the new text and the terms that were used.

        ``protected``: positions where no term may start or end (inside a longer word, as the dictionary
        stage segments the text: 地球 must not match inside 地球仪).
        """
        pieces: list[tuple[str, bool]] = []  # (text, replaced?)
        used: list[tuple[str, str]] = []
        hits: list[Hit] = []
        plain_start = i = 0
        n = len(text)
        while i < n:
            hit = None
            for length in range(min(self._max_len, n - i), 0, -1):
                key = text[i:i + length]
                if (key in self.terms and _whole_word(text, i, i + length)
                        and i not in protected and i + length not in protected):
                    hit = (key, self.terms[key])
                    break
            is_term = hit is not None
            if hit is None:
                ch = text[i]
                mapped = PUNCTUATION.get(ch)
                if mapped is None and "\uff01" <= ch <= "\uff5e":
                    mapped = unicodedata.normalize("NFKC", ch)
                if mapped is None:
                    i += 1
                    continue
                hit = (ch, mapped)
            else:
                used.append(hit)
            hits.append(Hit(i, i + len(hit[0]), hit[1], term=is_term))
            if plain_start < i:
                pieces.append((text[plain_start:i], False))
            pieces.append((hit[1], True))
            i += len(hit[0])
            plain_start = i
        if not pieces:
            return GlossaryResult(text=text, terms=(), changed=False)
        if plain_start < n:
            pieces.append((text[plain_start:], False))
        return GlossaryResult(text=join_pieces(pieces), terms=tuple(used), changed=True, hits=tuple(hits))


def join_pieces(pieces: list[tuple[str, bool]]) -> str:
    """Concatenate, adding one space where a replaced piece meets a word (or follows , ; : . ! ?).

    Untouched pieces keep their own spacing; runs of spaces are collapsed only when something was replaced.
    """
    out = ""
    last_replaced = False
    for text, replaced in pieces:
        if out and text and (replaced or last_replaced):
            left, right = out[-1], text[0]
            if not left.isspace() and not right.isspace() and _wordish(right) and (
                    _wordish(left) or left in ",;:.!?)"):
                out += " "
        out += text
        last_replaced = replaced
    return re.sub(r"[ \t]{2,}", " ", out).strip() if any(r for _, r in pieces) else out


def _whole_word(text: str, start: int, end: int) -> bool:
    """An ASCII term (e.g. "LoRA") matches whole words only; a Chinese term matches anywhere (no spaces)."""
    def ascii_word(ch: str) -> bool:
        return ch.isascii() and ch.isalnum()

    if ascii_word(text[start]) and start > 0 and ascii_word(text[start - 1]):
        return False
    return not (ascii_word(text[end - 1]) and end < len(text) and ascii_word(text[end]))


def _wordish(ch: str) -> bool:
    return ch.isalnum() or ch in "\"'([" or CJK.match(ch) is not None


def load_glossary(path: Path | None, *, explicit: bool) -> Glossary:
    """Read and check the glossary; a missing default file means an empty glossary (said in the log)."""
    if path is None or not Path(path).is_file():
        if explicit:
            raise ConfigError(f"glossary file {path} not found; create it (see models/glossary.toml in the "
                              "repository) or unset FLUX_GLOSSARY_FILE")
        return Glossary(source=None)
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"glossary {path} is not valid TOML: {exc}") from exc
    unknown = set(raw) - {"terms"}
    if unknown:
        raise ConfigError(f"glossary {path}: unknown top-level keys {sorted(unknown)}; put terms under [terms]")
    terms: dict[str, str] = {}
    for key, value in raw.get("terms", {}).items():
        if not isinstance(value, str):
            raise ConfigError(f"glossary {path}: terms.{key} must be a string, got {type(value).__name__}")
        if not key.strip() or not value.strip():
            raise ConfigError(f"glossary {path}: empty term or translation ({key!r} = {value!r})")
        if CJK.search(value):
            raise ConfigError(f"glossary {path}: terms.{key} = {value!r} still contains Chinese; the value must be "
                              "the English the model reads")
        terms[key] = value.strip()
    return Glossary(source=path, terms=terms)
