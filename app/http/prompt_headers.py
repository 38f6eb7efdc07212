"""The prompt stage's record as HTTP response headers (for ``curl -o host.png -D -`` users).

Why JSON with ``ensure_ascii``: header values are Latin-1 on the wire, so Chinese is sent as ``\\u79d1``
escapes, which survive every proxy and decode with any JSON parser (the same rule as X-Prompt-Warnings).
Why a size cap: a 2,000-character Chinese prompt is 12 KB once escaped, and several HTTP clients refuse
response headers past 16 KB in all; a value longer than ``MAX_HEADER_CHARS`` is cut and ends with a marker
saying where the full text is (the PNG's metadata and ``GET /api/jobs/{id}``), never silently.
"""

from __future__ import annotations

import json

MAX_HEADER_CHARS = 2048
CUT_MARK = "…[cut: the full value is in the PNG metadata (flux-service text chunk) and the job's info]"

PROMPT_HEADERS = ["X-Prompt-Translate", "X-Prompt-Original", "X-Prompt-English", "X-Prompt-Clip", "X-Prompt-T5",
                  "X-Prompt-Glossary", "X-Prompt-Translated", "X-Prompt-Translator", "X-Prompt-Words",
                  "X-Prompt-Dictionary", "X-T5-Unknown-Before", "X-T5-Unknown-After"]

#: what each prompt header says (published in the OpenAPI document with the other result headers)
PROMPT_HEADER_DOCS = {
    "X-Prompt-Translate": "The translate mode used: auto, glossary or off.",
    "X-Prompt-Original": "JSON string (ASCII-escaped): the prompt as the client sent it.",
    "X-Prompt-English": "JSON string: the prompt after the glossary and the translation model or dictionary.",
    "X-Prompt-Clip": "JSON string: the text CLIP read (after truncation to 77 tokens).",
    "X-Prompt-T5": "JSON string: the text T5 read.",
    "X-Prompt-Glossary": "JSON list of [term, English] glossary entries applied.",
    "X-Prompt-Translated": "JSON list of [source, English] pieces the translation model translated.",
    "X-Prompt-Translator": "JSON: the translation model used, or null.",
    "X-Prompt-Words": "JSON list of [source, English, stage] per word or run replaced, stage glossary, dictionary or "
                      "model (English \"\": a word the dictionary dropped).",
    "X-Prompt-Dictionary": "JSON: the dictionary used (jieba + CC-CEDICT, versions, licence), or null.",
    "X-T5-Unknown-Before": "Share of the typed prompt T5 maps to its unknown token (0..1).",
    "X-T5-Unknown-After": "Share of the encoded prompt T5 maps to its unknown token (0..1).",
}


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=True)


def capped_json(value, limit: int = MAX_HEADER_CHARS) -> str:
    """ASCII JSON of a string or a list, cut (with ``CUT_MARK``) so that it fits in ``limit`` characters.

    A list loses items from its end and gets ``CUT_MARK`` as its last item; when its first item alone is too
    long, that item is cut like a string (ending with the mark), so a reader always sees the start."""
    out = _json(value)
    if len(out) <= limit:
        return out
    if isinstance(value, str):
        return _cut_text(value, limit)
    items = list(value)
    while len(items) > 1 and len(_json(items + [CUT_MARK])) > limit:
        items.pop()
    out = _json(items + [CUT_MARK])
    if len(out) <= limit or not items:
        return out
    first = items[0] if isinstance(items[0], str) else _json(items[0])
    return "[" + _cut_text(first, limit - 2) + "]"


def _cut_text(value: str, limit: int) -> str:
    """The JSON string of ``value`` cut short enough (ending with ``CUT_MARK``) to fit in ``limit`` characters."""
    out, n = _json(value), len(value)
    while n > 0 and len(out) > limit:
        n = n * limit // (len(out) + 1) if n > 1 else 0
        out = _json(value[:n] + CUT_MARK)
    return out


def prompt_headers(info) -> dict[str, str]:
    return {
        "X-Prompt-Translate": info.translate,
        "X-Prompt-Original": capped_json(info.prompt_original),
        "X-Prompt-English": capped_json(info.prompt_english),
        "X-Prompt-Clip": capped_json(info.prompt_clip),
        "X-Prompt-T5": capped_json(info.prompt_t5),
        "X-Prompt-Glossary": capped_json(info.glossary_terms),
        "X-Prompt-Translated": capped_json(info.translated),
        "X-Prompt-Translator": _json(info.translator),
        "X-Prompt-Words": capped_json(info.prompt_words),
        "X-Prompt-Dictionary": _json(info.dictionary),
        "X-T5-Unknown-Before": f"{info.t5_unknown_before:.3f}",
        "X-T5-Unknown-After": f"{info.t5_unknown_after:.3f}",
    }
