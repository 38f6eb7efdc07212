"""What each prompt-stage configuration leaves for the text encoders, on the held-out Chinese prompts (issue 20).

For each configuration (as typed / glossary only / glossary + dictionary, the default / glossary + the
translation model when ``models/translator`` or FLUX_TRANSLATOR_PATH is there) it prints, over
tests/data/zh_prompts_heldout.txt: the share of Chinese characters left in the English, T5's unknown-token
share on the English, the CLIP tokens the English uses, and milliseconds per prompt (one thread, first pass
with empty caches and again warm). Then the dictionary's load time and memory, and the stage's cost on a
100-character prompt. Not a test: read the shares; the milliseconds depend on the machine.

Tokenizers: the serving model's (``models/flux1-dev`` or FLUX_MODEL_PATH) when present, else the demo
model's offline ones (its T5 vocabulary has no CJK, like T5-XXL's; its CLIP tokenizer is byte-level for words
outside a short list, so it over-counts English). When ``open_clip_torch`` is installed (it carries CLIP's
BPE vocabulary: ``pip install --no-deps open_clip_torch``), the CLIP column also gives real CLIP token counts.

    .venv/bin/python bench/prompt_stages.py
    .venv/bin/python bench/prompt_stages.py --stand-in   # + the tests' random MarianMT: plumbing cost only
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

HELD_OUT = ROOT / "tests" / "data" / "zh_prompts_heldout.txt"
HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def read_prompts(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def tokenizers(settings):
    """(CLIP, T5, what they are): the serving model's if its folder is there, else the demo model's."""
    from transformers import AutoTokenizer

    from pipelines.model_source import resolve_model_source

    source = resolve_model_source(settings)
    clip = AutoTokenizer.from_pretrained(str(source.path / "tokenizer"), local_files_only=True)
    t5 = AutoTokenizer.from_pretrained(str(source.path / "tokenizer_2"), local_files_only=True)
    what = "demo model's offline tokenizers" if source.demo else f"the serving model's tokenizers ({source.label})"
    return clip, t5, what


def real_clip_tokenizer():
    """CLIP's own BPE (49,408 tokens) from open_clip's vocabulary file, if that package is installed."""
    try:
        from importlib.metadata import distribution

        vocab_gz = Path(distribution("open_clip_torch").locate_file("open_clip/bpe_simple_vocab_16e6.txt.gz"))
    except Exception:  # noqa: BLE001 - optional: not installed
        return None
    if not vocab_gz.is_file():
        return None
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    merges = gzip.open(vocab_gz, "rt", encoding="utf-8").read().split("\n")[1:49152 - 256 - 2 + 1]
    byte_chars = list(bytes_to_unicode().values())
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="clip-bpe-"))
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def measure(name: str, run, prompts: list[str], clip, t5, real_clip) -> dict:
    from pipelines.prompt.check import check_prompt

    first, warm, outputs = [], [], []
    for prompt in prompts:
        started = time.perf_counter()
        outputs.append(run(prompt))
        first.append(time.perf_counter() - started)
    for prompt in prompts:
        started = time.perf_counter()
        run(prompt)
        warm.append(time.perf_counter() - started)
    han_in = sum(len(HAN.findall(p)) for p in prompts)
    han_left = sum(len(HAN.findall(e)) for e in outputs)
    reports = [check_prompt(clip, t5, e, 512) for e in outputs]
    row = dict(
        name=name, han_left=han_left, han_in=han_in,
        t5_unknown=statistics.mean(r.t5_unknown_fraction for r in reports),
        clip_mean=statistics.mean(r.clip_tokens for r in reports), clip_max=max(r.clip_tokens for r in reports),
        clip_over=sum(r.clip_tokens > r.clip_limit for r in reports),
        ms_first=1000 * statistics.mean(first), ms_warm=1000 * statistics.mean(warm), outputs=outputs)
    if real_clip is not None:
        counts = [len(real_clip(e, truncation=False)["input_ids"]) for e in outputs]
        row.update(real_clip_mean=statistics.mean(counts), real_clip_max=max(counts),
                   real_clip_over=sum(c > 77 for c in counts))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, default=HELD_OUT)
    parser.add_argument("--stand-in", action="store_true",
                        help="also run the tests' tiny random MarianMT (translator plumbing cost; its English is noise)")
    parser.add_argument("--show", type=int, default=6, help="print this many prompts with each configuration's English")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from pipelines.prompt import cedict_index
    from pipelines.prompt.dictionary import Dictionary
    from pipelines.prompt.glossary import load_glossary
    from pipelines.prompt.stage import PromptStage, find_translator_path
    from pipelines.prompt.translator import load_translator
    from pipelines.settings import Settings

    settings = Settings()
    prompts = read_prompts(args.prompts)
    clip, t5, what = tokenizers(settings)
    real_clip = real_clip_tokenizer()
    glossary = load_glossary(settings.glossary_file or settings.models_dir / "glossary.toml", explicit=False)

    # the dictionary: first build of the index (into a fresh folder), then a load as every later start does
    build_dir = Path(tempfile.mkdtemp(prefix="zh-dictionary-bench-"))
    started = time.perf_counter()
    cedict_index.ensure_index(build_dir, cedict_index.find_sources())
    build_s = time.perf_counter() - started
    before = rss_mib()
    dictionary = Dictionary(settings.dictionary_cache_dir)
    dictionary.load()
    load_rss = rss_mib() - before
    load_s = dictionary.load_seconds

    with_dictionary = PromptStage(glossary, None, t5, dictionary)
    glossary_only = PromptStage(glossary, None, t5, None)
    configs = [
        ("as typed (translate=off)", lambda p: p),
        ("glossary only, before issue 20 (no word boundaries)", lambda p: glossary_only.apply(p, "glossary").english),
        ("glossary (translate=glossary)", lambda p: with_dictionary.apply(p, "glossary").english),
        ("glossary + dictionary (translate=auto, default install)", lambda p: with_dictionary.apply(p, "auto").english),
    ]
    translator_path = find_translator_path(settings)
    if translator_path is not None:
        model = load_translator(translator_path, device="cpu", cache_size=4096)
        with_model = PromptStage(glossary, model, t5, dictionary)
        configs.append((f"glossary + model {translator_path.name} (translate=auto)",
                        lambda p: with_model.apply(p, "auto").english))
    if args.stand_in:
        from tests.demo_translator import build_demo_translator

        folder = Path(tempfile.mkdtemp(prefix="stand-in-translator-"))
        build_demo_translator(folder)
        stand_in = PromptStage(glossary, load_translator(folder, device="cpu", cache_size=4096), t5, dictionary)
        configs.append(("glossary + stand-in model (random MarianMT: cost only)",
                        lambda p: stand_in.apply(p, "auto").english))

    rows = []
    for name, run in configs:
        dictionary.english.cache_clear()  # "first": every word looked up afresh
        rows.append(measure(name, run, prompts, clip, t5, real_clip))

    # the 100-character prompt: medians of 30 runs of CPU time (time.thread_time), so a busy machine does not
    # count other processes' work; "empty cache": the per-word cache cleared before each run
    text100 = "，".join(prompts)[:100]
    cold100, warm100, dict100 = [], [], []
    for _ in range(30):
        dictionary.english.cache_clear()
        started = time.thread_time()
        with_dictionary.apply(text100, "auto")
        cold100.append(time.thread_time() - started)
        started = time.thread_time()
        with_dictionary.apply(text100, "auto")
        warm100.append(time.thread_time() - started)
        started = time.thread_time()
        dictionary.render(text100, glossary.apply(text100, dictionary.protected(text100)).hits)
        dict100.append(time.thread_time() - started)
    cold100, warm100, dict100 = (statistics.median(x) for x in (cold100, warm100, dict100))

    print(f"\n{len(prompts)} prompts from {args.prompts.relative_to(ROOT) if args.prompts.is_relative_to(ROOT) else args.prompts}, "
          f"{rows[0]['han_in']} Chinese characters; tokenizers: {what}; one CPU thread; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"command: {' '.join(shlex.quote(a) for a in [sys.executable.split('/')[-1], *sys.argv])}\n")
    clip_head = "CLIP tokens mean / max / >77" + (" (demo tok.) | real CLIP BPE mean / max / >77" if real_clip else "")
    print(f"| configuration | CJK chars left | T5 unknown share | {clip_head} | ms/prompt first / warm |")
    print("|---|---|---|---|" + ("---|" if real_clip else "") + "---|")
    for r in rows:
        clip_cells = f"{r['clip_mean']:.1f} / {r['clip_max']} / {r['clip_over']}"
        if real_clip is not None:
            clip_cells += f" | {r['real_clip_mean']:.1f} / {r['real_clip_max']} / {r['real_clip_over']}"
        print(f"| {r['name']} | {r['han_left']} of {r['han_in']} ({r['han_left'] / r['han_in']:.1%}) | "
              f"{r['t5_unknown']:.1%} | {clip_cells} | {r['ms_first']:.2f} / {r['ms_warm']:.2f} |")
    print(f"\ndictionary: first build of the index {build_s:.2f} s (once per machine and version); load "
          f"{load_s:.2f} s, +{load_rss:.0f} MiB resident; {len(dictionary)} words")
    print(f"100-character prompt, translate=auto with the dictionary (median CPU time of 30 runs): the whole stage "
          f"{1000 * cold100:.2f} ms with an empty word cache, {1000 * warm100:.2f} ms warm; of which glossary + "
          f"segmentation + dictionary {1000 * dict100:.2f} ms (the rest: T5 tokenizing); target < 5 ms")
    for prompt, *english in list(zip(prompts, *(r["outputs"] for r in rows)))[:args.show]:
        print(f"\n{prompt}")
        for r, e in zip(rows[1:], english[1:]):
            print(f"  {r['name'].split(' (')[0]:<38} {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
