"""The embedded demo model: a tiny FLUX pipeline with random weights, plus a demo host_person LoRA.

Why: our machines and CI have no GPU and no model hub, yet every test must run the real diffusers and PEFT
code paths. So we build, with our own code and a fixed seed, a pipeline made of the real diffusers and
transformers classes (``FluxTransformer2DModel``, ``AutoencoderKL`` with FLUX's 16 latent channels and 8x
scale, ``CLIPTextModel`` and ``T5EncoderModel`` with tokenizers built offline) but tiny, so a 1024x1024
image takes seconds on a CPU. It is saved in the diffusers folder layout and loaded back through the same
``from_pretrained`` path as real FLUX.1-dev weights, so loading is tested too.

The folder it writes mirrors ``models/``::

    <cache>/demo-v3-<libs>/flux1-dev/...                       diffusers pipeline folder
    <cache>/demo-v3-<libs>/lora/host_person/pytorch_lora_weights.safetensors    diffusers layout
    <cache>/demo-v3-<libs>/lora/host_person/adapter_model.safetensors           PEFT layout
    <cache>/demo-v3-<libs>/lora/host_person/adapter_config.json                 (lora_alpha != r)
    <cache>/demo-v3-<libs>/MANIFEST.json     size + sha256 of every file above, written when built
    <cache>/demo-v3-<libs>/COMPLETE          written last

Same bytes every time: weights come from fixed seeds, files are written in a fixed order, the library
versions that transformers/diffusers stamp into config files are removed, and the folder is built in a
temporary directory then renamed, so concurrent first uses (a test and a server) cannot see a
half-written model. ``<libs>`` is a short hash of the torch/diffusers/transformers versions: random
initialisation may change between releases, so each environment gets its own, freshly built copy. It draws noise-like pictures; everything served from it is labelled ``demo``.

Integrity: a flipped block in a cached weight file used to be served silently (different pixels, no
warning). The cache is ours, so ``ensure_demo_model`` checks every file against ``MANIFEST.json`` on each
start-up (about 1 MB to hash: milliseconds) and, on any mismatch, logs which files were wrong and rebuilds
the cache (built aside, then swapped in; a damaged folder is the only one ever replaced).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

#: bump when the demo model's bytes change, so old caches are not reused
DEMO_VERSION = "demo-v3"  # v3: MANIFEST.json
MANIFEST = "MANIFEST.json"
DEMO_LORA_RANK = 4
DEMO_LORA_ALPHA = 8  # deliberately != rank: PEFT scales by alpha / r = 2
#: transformer modules the demo host_person LoRA adapts (attention and feed-forward, like real FLUX LoRAs)
DEMO_LORA_TARGETS = (
    "transformer_blocks.0.attn.to_q",
    "transformer_blocks.0.attn.to_k",
    "transformer_blocks.0.attn.to_v",
    "transformer_blocks.0.attn.to_out.0",
    "transformer_blocks.0.attn.add_q_proj",
    "transformer_blocks.0.attn.add_k_proj",
    "transformer_blocks.0.attn.add_v_proj",
    "transformer_blocks.0.attn.to_add_out",
    "transformer_blocks.0.ff.net.0.proj",
    "transformer_blocks.0.ff.net.2",
    "single_transformer_blocks.0.attn.to_q",
    "single_transformer_blocks.0.attn.to_k",
    "single_transformer_blocks.0.attn.to_v",
    "single_transformer_blocks.0.proj_mlp",
    "single_transformer_blocks.0.proj_out",
)

# Words the demo tokenizers know. Chinese is deliberately absent from the T5 vocabulary, as it is (almost
# entirely) from the real T5-XXL one, so the unknown-token diagnostics behave as they do on FLUX.1-dev.
_WORDS = """a an the and or of in on at to with for from by is are this that it as be
portrait photo photograph picture image painting illustration render studio background outdoor indoor
science scientist host presenter person man woman people face smile smiling serious professional formal
suit shirt jacket glasses hair eyes standing sitting looking camera front view close up wide shot light
natural soft warm cold blue red green white black gray yellow orange purple bright dark colorful
laboratory lab classroom stage screen desk table book books chart planet planets star stars space galaxy
earth moon sun sky cloud clouds tree trees forest mountain river sea ocean city street building room
detailed high quality realistic cinematic lighting sharp focus 4k 8k hdr best masterpiece style art
molecule atom cell dna robot computer microscope telescope experiment explain explaining pointing hand
hands holding talking speaking young old happy friendly calm confident clean simple modern video""".split()


def demo_root(cache_dir: Path) -> Path:
    """The folder that stands in for ``models/`` when the demo model serves."""
    return Path(cache_dir) / f"{DEMO_VERSION}-{_library_fingerprint()}"


def _library_fingerprint() -> str:
    import hashlib
    from importlib.metadata import version

    libs = ",".join(f"{name}={version(name)}" for name in ("torch", "diffusers", "transformers"))
    return hashlib.sha256(libs.encode()).hexdigest()[:10]


def ensure_demo_model(cache_dir: Path) -> Path:
    """Build the demo model into ``cache_dir`` unless a verified copy is there; return its models root."""
    root = demo_root(cache_dir)
    damaged = False
    if (root / "COMPLETE").is_file():
        problems = verify_demo_model(root)
        if not problems:
            return root
        damaged = True
        logger.warning("DEMO MODEL CACHE DAMAGED at %s: %s. Rebuilding it (about 10 s; it is our own cache, nothing "
                       "is downloaded)", root, "; ".join(problems))
    else:
        logger.warning("Building the embedded demo model (random weights) into %s: first use only", root)
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=root.parent))
    try:
        build_demo_model(tmp)
        _install(tmp, root, replace_damaged=damaged)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if damaged:
        logger.warning("demo model cache rebuilt at %s", root)
    return root


def _install(tmp: Path, root: Path, *, replace_damaged: bool) -> None:
    """Rename the freshly built ``tmp`` to ``root`` atomically. A damaged ``root`` is first moved aside (never
    edited in place, so a process still reading it sees whole files); if another process installed a good
    copy meanwhile, keep theirs."""
    aside = Path(tempfile.mkdtemp(prefix=f".{root.name}.damaged-", dir=root.parent)) if replace_damaged else None
    try:
        if aside is not None:
            try:
                os.rename(root, aside / root.name)
            except FileNotFoundError:
                pass
        try:
            os.rename(tmp, root)
        except OSError:
            if (root / "COMPLETE").is_file() and not verify_demo_model(root):
                return  # another process won the race with a good copy
            shutil.rmtree(root, ignore_errors=True)  # a half-built or damaged folder: take its place
            os.rename(tmp, root)
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def verify_demo_model(root: Path) -> list[str]:
    """What differs from ``MANIFEST.json`` (missing, resized or changed files); empty when intact."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"{MANIFEST} is missing or unreadable ({type(exc).__name__})"]
    problems = []
    for rel, want in sorted(manifest.items()):
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != want["bytes"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, {want['bytes']} expected")
        elif _sha256(path) != want["sha256"]:
            problems.append(f"{rel} does not match its sha256 (content changed)")
    return problems


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(root: Path) -> None:
    files = {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)}
             for p in sorted(root.rglob("*")) if p.is_file() and p.name not in (MANIFEST, "COMPLETE")}
    (root / MANIFEST).write_text(json.dumps({"version": DEMO_VERSION, "files": files}, indent=2, sort_keys=True)
                                 + "\n", encoding="utf-8")


def build_demo_model(root: Path) -> None:
    """Write the demo pipeline and demo LoRA into ``root`` (deterministic bytes)."""
    import torch

    pipe = _build_pipeline(torch)
    pipe.save_pretrained(root / "flux1-dev", safe_serialization=True)
    _strip_library_versions(root / "flux1-dev")
    _write_demo_lora(torch, pipe.transformer, root / "lora" / "host_person")
    (root / "README.md").write_text(
        "Embedded demo model built by pipelines/demo_model.py: random weights, noise-like pictures.\n"
        "Point FLUX_MODEL_PATH at real FLUX.1-dev weights for real images.\n",
        encoding="utf-8",
    )
    _write_manifest(root)
    (root / "COMPLETE").write_text(DEMO_VERSION + "\n", encoding="utf-8")


def _build_pipeline(torch):
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tok = clip_tokenizer()
    t5_tok = t5_tokenizer()

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=64,  # 16 latent channels packed 2x2, as in FLUX.1
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=True,  # FLUX.1-dev is guidance-distilled
        axes_dims_rope=(4, 4, 8),
    )
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),  # four blocks: the real 8x scale factor
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    torch.manual_seed(2)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(clip_tok.get_vocab()),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=clip_tok.bos_token_id,
            eos_token_id=clip_tok.eos_token_id,
            pad_token_id=clip_tok.pad_token_id,
        )
    )
    torch.manual_seed(3)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=len(t5_tok.get_vocab()),
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=1,
            num_heads=4,
            relative_attention_num_buckets=8,
            is_encoder_decoder=False,
            use_cache=False,
        )
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tok,
        text_encoder_2=text_encoder_2,
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def _strip_library_versions(folder: Path) -> None:
    """Drop the library versions save_pretrained stamps into configs, so the bytes depend on our code only."""
    for path in sorted(folder.rglob("*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and ({"transformers_version", "_diffusers_version"} & set(data)):
            data.pop("transformers_version", None)
            data.pop("_diffusers_version", None)
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def clip_tokenizer():
    """A byte-level BPE tokenizer in CLIP's format: every byte is a token, known words merge to one."""
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in byte_chars:
        vocab.setdefault(ch, len(vocab))
    for ch in byte_chars:
        vocab.setdefault(ch + "</w>", len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        left = symbols[0]
        for right in symbols[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    tok.model_max_length = 77
    return tok


def t5_tokenizer():
    """A unigram tokenizer in T5's format whose vocabulary, like T5-XXL's, has no CJK characters."""
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    seen = {v for v, _ in vocab}
    singles = "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'\"()-_/&+%#@*"
    for ch in singles + singles.upper():
        if ch not in seen:
            vocab.append((ch, -8.0))
            seen.add(ch)
        if "▁" + ch not in seen:
            vocab.append(("▁" + ch, -7.0))
            seen.add("▁" + ch)
    for word in _WORDS:
        for piece in ("▁" + word, word):
            if piece not in seen:
                vocab.append((piece, -3.0 - 0.01 * len(vocab)))
                seen.add(piece)
    tok = T5Tokenizer(vocab=vocab, extra_ids=0)
    tok.model_max_length = 512
    return tok


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _write_demo_lora(torch, transformer, folder: Path) -> None:
    """Save one demo adapter in both layouts the users have; both describe the same effective weights."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    modules = dict(transformer.named_modules())
    gen = torch.Generator().manual_seed(1234)
    peft_sd: dict[str, object] = {}
    diffusers_sd: dict[str, object] = {}
    scaling = DEMO_LORA_ALPHA / DEMO_LORA_RANK  # a power of two, so folding it into B is exact
    for name in DEMO_LORA_TARGETS:
        layer = modules[name]
        a = torch.randn(DEMO_LORA_RANK, layer.in_features, generator=gen) / layer.in_features**0.5
        b = torch.randn(layer.out_features, DEMO_LORA_RANK, generator=gen) * 0.5
        peft_sd[f"base_model.model.{name}.lora_A.weight"] = a.contiguous()
        peft_sd[f"base_model.model.{name}.lora_B.weight"] = b.contiguous()
        diffusers_sd[f"transformer.{name}.lora_A.weight"] = a.clone().contiguous()
        diffusers_sd[f"transformer.{name}.lora_B.weight"] = (b * scaling).contiguous()
    save_file(diffusers_sd, str(folder / "pytorch_lora_weights.safetensors"), metadata={"format": "pt"})
    save_file(peft_sd, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": DEMO_LORA_RANK,
        "lora_alpha": DEMO_LORA_ALPHA,
        "lora_dropout": 0.0,
        "bias": "none",
        "init_lora_weights": True,
        "target_modules": sorted(DEMO_LORA_TARGETS),
        "base_model_name_or_path": "black-forest-labs/FLUX.1-dev (embedded demo)",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    (folder / "README.md").write_text(
        "Demo host_person LoRA (random weights) in the diffusers layout (pytorch_lora_weights.safetensors)\n"
        f"and the PEFT layout (adapter_model.safetensors + adapter_config.json, r={DEMO_LORA_RANK}, "
        f"lora_alpha={DEMO_LORA_ALPHA}).\n",
        encoding="utf-8",
    )
