"""An optional local translation model: any transformers sequence-to-sequence translation folder.

Why local and optional: prompts must reach T5 in English, but the service runs offline on GPU boxes and
must not send prompts anywhere. MarianMT (``Helsinki-NLP/opus-mt-zh-en``, ~300 MB), NLLB and M2M100 all
load through ``AutoModelForSeq2SeqLM``; the folder is ``models/translator`` when it is there (found like
``models/flux1-dev``) or the one ``FLUX_TRANSLATOR_PATH`` names, and is loaded once at start-up (a bad folder
fails start-up, never a request). Without one, the dictionary stage (``dictionary.py``) translates instead.
It runs on the CPU by default (``FLUX_TRANSLATOR_DEVICE=cpu``: an estimated few hundred milliseconds per prompt
for MarianMT, and it leaves GPU memory to FLUX)
or on the engine's device (``engine``). Translations are cached per text in a bounded LRU, so a prompt used
again costs nothing and always gives the same English. Decoding is greedy (``do_sample=False``): the same
text always gives the same English.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

#: source / target language codes for the multilingual families (MarianMT zh-en needs none)
_LANGS = {"nllb": ("zho_Hans", "eng_Latn"), "m2m_100": ("zh", "en")}


class Translator:
    """Chinese -> English with one resident seq2seq model; thread-safe, cached, deterministic."""

    def __init__(self, model, tokenizer, *, label: str, device: str, demo: bool = False, cache_size: int = 256) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.label = label
        self.device = device
        self.demo = demo
        self.cache_size = cache_size
        self._cache: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()
        self.calls = 0  # model calls (cache misses), for tests and logs
        self._forced_bos: int | None = None
        family = _family(tokenizer)
        if family:
            src, tgt = _LANGS[family]
            tokenizer.src_lang = src
            if family == "nllb":
                self._forced_bos = tokenizer.convert_tokens_to_ids(tgt)
            else:
                self._forced_bos = tokenizer.get_lang_id(tgt)

    def translate(self, text: str) -> str:
        with self._lock:
            if text in self._cache:
                self._cache.move_to_end(text)
                return self._cache[text]
            english = self._run(text)
            self._cache[text] = english
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return english

    def _run(self, text: str) -> str:
        import torch

        started = time.perf_counter()
        limit = min(int(getattr(self.tokenizer, "model_max_length", 512) or 512), 512)
        enc = self.tokenizer(text, return_tensors="pt", truncation=True, max_length=limit).to(self.device)
        n = int(enc["input_ids"].shape[1])
        kwargs = dict(max_new_tokens=min(2 * n + 4, limit), do_sample=False)
        if self._forced_bos is not None:
            kwargs["forced_bos_token_id"] = self._forced_bos
        with torch.inference_mode():
            out = self.model.generate(**enc, **kwargs)
        english = self.tokenizer.decode(out[0], skip_special_tokens=True).strip()
        self.calls += 1
        logger.info("translated %r -> %r with %s (%.2fs)", text, english, self.label, time.perf_counter() - started)
        return english


def _family(tokenizer) -> str | None:
    name = type(tokenizer).__name__.lower()
    if "nllb" in name:
        return "nllb"
    if "m2m100" in name:
        return "m2m_100"
    return None


def load_translator(path: Path, *, device: str, label: str | None = None, demo: bool = False,
                    cache_size: int = 256) -> Translator:
    """Load a translation folder once (never from a hub); a folder that does not load is a ``ConfigError``."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"translator folder {path} does not exist: download one with `huggingface-cli download "
                          "Helsinki-NLP/opus-mt-zh-en --local-dir models/translator`, or unset FLUX_TRANSLATOR_PATH")
    if not any(path.iterdir()):
        raise ConfigError(f"translator folder {path} is empty: download a model into it (`huggingface-cli download "
                          "Helsinki-NLP/opus-mt-zh-en --local-dir models/translator`) or remove it; without one "
                          "the dictionary translates")
    started = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        model = AutoModelForSeq2SeqLM.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"could not load the translator from {path} (a transformers sequence-to-sequence "
                          f"translation folder is expected, e.g. Helsinki-NLP/opus-mt-zh-en): {exc}") from None
    model.to(device).eval()
    translator = Translator(model, tokenizer, label=label or path.name, device=device, demo=demo,
                            cache_size=cache_size)
    logger.info("translator ready: %s (%s) on %s, %.1fs", translator.label, type(model).__name__, device,
                time.perf_counter() - started)
    return translator
