"""A tiny MarianMT translation model with random weights, built offline: the tests' stand-in translation model.

Why it lives in tests/: the translation-model path of the prompt stage (load a transformers
sequence-to-sequence folder through ``AutoModelForSeq2SeqLM`` / ``AutoTokenizer``, tokenize, ``generate``,
decode, cache) must run in the tests, and no real model (``Helsinki-NLP/opus-mt-zh-en``) can be downloaded
here. Its English is a deterministic string of random words unrelated to the prompt, so since issue 20 it is
never served: on the demo model the dictionary stage (jieba + CC-CEDICT) translates instead. It is made of
the real transformers classes (``MarianMTModel`` and a ``PreTrainedTokenizerFast`` built with the
``tokenizers`` library) and saved in the normal folder layout, exactly as a real translation folder is.

It can only write English: the output bias of every Chinese token is -1e4, so whatever it writes is text
T5 can read, which is what the tests of the translation path need.
"""

from __future__ import annotations

from pathlib import Path

DEMO_TRANSLATOR_LABEL = "stand-in translator (tiny MarianMT, random weights: output is random English words)"

# Target side: English words (the demo T5 knows them as whole words too). Source side: the Han characters
# of the starter glossary and of the old guide, each its own token (as BERT-style tokenizers split CJK).
_ENGLISH = """a the and of in with science show host presenter person portrait photo studio background
outdoor scene natural light smile smiling serious professional formal suit face front view camera
laboratory classroom stage screen book chart planet star space earth moon sky cloud tree forest city
street room detailed high quality realistic cinematic lighting soft warm bright modern clean simple
young friendly calm confident explaining pointing hand holding talking standing sitting glasses hair""".split()
_HAN = ("科普主持人专业形象微笑正式着装演播室背景户外场景自然光严肃表情正面侧面姿势固定设不同看向镜头手讲解站立坐"
        "自信友好亲切开心西衬衫领带白大褂眼男女性年轻中短长黑物角色特写半身像全肖照片内实验教舞台绿幕蓝纯色"
        "虚化城市街道森林天空星宇宙太地球柔灯线阳逆学显望远机器电脑屏黑板书架图表分子细胞行高清质量节丰富写真影感简洁现代"
        "的了在是和一个着很")
_SPECIALS = ("<pad>", "</s>", "<unk>")


def _vocab() -> dict[str, int]:
    vocab: dict[str, int] = {}
    for token in (*_SPECIALS, *_ENGLISH, *dict.fromkeys(_HAN), *",.;:!?()"):
        vocab.setdefault(token, len(vocab))
    return vocab


def _tokenizer():
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = _vocab()
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    # BertNormalizer(handle_chinese_chars) puts spaces around each Han character, so each is one token
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", vocab["</s>"])])
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # joins words with spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=64)
    return fast


def build_demo_translator(root: Path) -> None:
    """Write the tokenizer and a tiny random MarianMTModel into ``root`` (same weights every time)."""
    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    tok = _tokenizer()
    vocab = tok.get_vocab()
    config = MarianConfig(
        vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=128,
        pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"], decoder_start_token_id=vocab["<pad>"],
        forced_eos_token_id=vocab["</s>"], bos_token_id=None,
    )
    torch.manual_seed(13)
    model = MarianMTModel(config)
    with torch.no_grad():
        bias = torch.zeros_like(model.final_logits_bias)
        for token, idx in vocab.items():
            if len(token) == 1 and not token.isascii() or token in ",.;:!?()":
                bias[0, idx] = -1e4  # it can only write English words
        bias[0, vocab["<unk>"]] = -1e4
        model.final_logits_bias.copy_(bias)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id, eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id, forced_eos_token_id=config.forced_eos_token_id,
        num_beams=1, do_sample=False)
    model.save_pretrained(root, safe_serialization=True)
    tok.save_pretrained(root)
    (root / "README.md").write_text(
        "Test stand-in translation model built by tests/demo_translator.py: a tiny MarianMTModel with RANDOM\n"
        "weights. Its output is random English words, unrelated to the input.\n", encoding="utf-8")
