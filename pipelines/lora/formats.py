"""LoRA file formats: recognise who wrote a file, convert it to the one naming the engine uses, say why not.

What the trainers write (details in docs/lora-guide.en.md, "LoRAs from other trainers"):

- PEFT ``save_pretrained``: ``adapter_model.safetensors`` with ``base_model.model.<module>.lora_A/B.weight``
  (+ ``.lora_magnitude_vector`` with DoRA) and ``adapter_config.json`` (r, lora_alpha, use_rslora, use_dora,
  rank/alpha patterns). diffusers ignores that JSON, so we read it ourselves.
- diffusers' trainers (``train_dreambooth_lora_flux.py``): ``pytorch_lora_weights.safetensors`` with
  ``transformer.<module>...`` and, with ``--train_text_encoder``, ``text_encoder.<module>...`` keys, plus the
  LoraConfig of each part in the ``lora_adapter_metadata`` header.
- ai-toolkit (also Replicate's flux-fine-tuner and fal): diffusers naming, usually a ``config.yaml`` beside it.
- kohya sd-scripts: ``lora_unet_double_blocks_N_*``/``lora_unet_single_blocks_N_*`` (+ ``lora_te1_*`` for
  CLIP-L) with ``lora_down``/``lora_up``/``alpha``; diffusers' converter folds alpha/r into the weights, but
  it drops keys it does not know with a log line and fails on some shapes with an empty AssertionError, so
  :func:`diagnose_kohya` checks the file first and names what is wrong.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path

from pipelines.errors import AdapterCorrupt, AdapterMismatch
from pipelines.lora.weights import PEFT_CONFIG, LoraWeights

logger = logging.getLogger(__name__)

_PEFT_PREFIX = "base_model.model."
#: LoraConfig fields we take from a PEFT adapter_config.json (the rest describe training, not the weights)
_PEFT_CONFIG_KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora",
                     "use_dora", "lora_bias", "fan_in_fan_out", "exclude_modules")
_SD_UNET_WORDS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")
#: kohya FLUX layer names diffusers' converter (0.42) knows, and the block counts it loops over
_KOHYA_DOUBLE = {"img_attn_proj", "img_attn_qkv", "img_mlp_0", "img_mlp_2", "img_mod_lin", "txt_attn_proj",
                 "txt_attn_qkv", "txt_mlp_0", "txt_mlp_2", "txt_mod_lin"}
_KOHYA_SINGLE = {"linear1", "linear2", "modulation_lin"}
_KOHYA_OTHER = {"guidance_in_in_layer", "guidance_in_out_layer", "img_in", "txt_in", "time_in_in_layer",
                "time_in_out_layer", "vector_in_in_layer", "vector_in_out_layer", "final_layer_linear",
                "final_layer_adaLN_modulation_1"}
_KOHYA_DOUBLE_BLOCKS, _KOHYA_SINGLE_BLOCKS = 19, 38
#: FLUX.1-dev's q, k, v, mlp widths that diffusers' converter splits ``single_blocks_N_linear1`` into
_LINEAR1_DIMS = (3072, 3072, 3072, 12288)
_KOHYA_NAME = re.compile(r"^lora_unet_(?:double_blocks_(?P<d>\d+)_(?P<dn>.+)|single_blocks_(?P<s>\d+)_(?P<sn>.+)|"
                         r"(?P<o>.+))$")


def convert(weights: Path, raw: dict, header: dict) -> LoraWeights:
    """Any supported layout -> :class:`LoraWeights` in diffusers naming (see its docstring)."""
    if all(k.startswith(_PEFT_PREFIX) for k in raw):
        lora = _from_peft(weights, raw)
    elif is_kohya(raw):
        lora = _from_kohya(weights, raw)
    else:
        lora = _from_diffusers_or_other(weights, raw, header)
    lora.trigger_words, lora.trigger_source = trigger_words(weights, header)
    if lora.format == "diffusers" and _ai_toolkit_config(weights) is not None:
        lora.format = "ai-toolkit"
    return lora


def is_kohya(raw) -> bool:
    return any(".lora_down.weight" in k or k.startswith(("lora_unet_", "lora_te")) for k in raw)


def _from_peft(weights: Path, raw: dict) -> LoraWeights:
    cfg_path = weights.parent / PEFT_CONFIG
    if not cfg_path.is_file():
        raise AdapterCorrupt(f"LoRA {weights} is in PEFT layout but {cfg_path.name} is missing beside it, "
                             "so its r and lora_alpha (the strength scaling) are unknown", path=str(weights))
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        config = {k: cfg[k] for k in _PEFT_CONFIG_KEYS if cfg.get(k) is not None}
        r, alpha = int(config["r"]), float(config["lora_alpha"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise AdapterCorrupt(f"LoRA config {cfg_path} is unreadable or lacks r/lora_alpha ({exc})",
                             path=str(cfg_path)) from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterMismatch(f"LoRA {weights}: peft_type {cfg.get('peft_type')!r} is not LORA", path=str(weights))
    if isinstance(config.get("target_modules"), list):  # a str is a regex in PEFT; keep it as is
        config["target_modules"] = sorted(config["target_modules"])
    sd = {"transformer." + k[len(_PEFT_PREFIX):]: v for k, v in raw.items()}
    sd = {k.replace(".default.weight", ".weight"): v for k, v in sd.items()}  # adapter name left in by some tools
    has_magnitude = any(k.endswith(".lora_magnitude_vector") for k in sd)
    if has_magnitude and not config.get("use_dora"):
        raise AdapterCorrupt(f"LoRA {weights} holds DoRA magnitude vectors (lora_magnitude_vector) but "
                             f"{cfg_path.name} does not say use_dora=true", path=str(weights))
    if config.get("use_dora") and not has_magnitude:
        raise AdapterCorrupt(f"LoRA {weights}: {cfg_path.name} says use_dora=true but the file holds no "
                             "lora_magnitude_vector tensors", path=str(weights))
    kind = "rsLoRA, " if config.get("use_rslora") else ""
    notes = [f"PEFT layout: {kind}r={r}, lora_alpha={alpha:g} from {cfg_path.name}"
             + (", DoRA" if config.get("use_dora") else "")
             + (", per-module rank_pattern/alpha_pattern" if config.get("rank_pattern") or config.get("alpha_pattern")
                else "")]
    return LoraWeights(path=weights, format="peft", state_dict=sd, config=config, notes=notes)


def _adapter_metadata(weights: Path, header: dict) -> dict:
    if not header.get("lora_adapter_metadata"):
        return {}
    try:
        return json.loads(header["lora_adapter_metadata"])
    except json.JSONDecodeError:
        raise AdapterCorrupt(f"LoRA {weights}: its lora_adapter_metadata header is not JSON",
                             path=str(weights)) from None


def _normalise(sd: dict) -> dict:
    """diffusers' converted state dict -> our contract: text-encoder keys in PEFT naming, without the
    ``text_model.`` level that transformers 5's CLIPTextModel no longer has."""
    from diffusers.utils import convert_state_dict_to_diffusers, convert_state_dict_to_peft

    out = {k: v for k, v in sd.items() if not k.startswith("text_encoder.")}
    te = {k.removeprefix("text_encoder."): v for k, v in sd.items() if k.startswith("text_encoder.")}
    if te:
        te = convert_state_dict_to_peft(convert_state_dict_to_diffusers(te))
        out.update({"text_encoder." + k.removeprefix("text_model."): v for k, v in te.items()})
    return out


def _convert_with_diffusers(weights: Path, raw: dict, fmt: str, diagnosis: str = ""):
    from diffusers import FluxPipeline

    try:
        sd, alphas = FluxPipeline.lora_state_dict(dict(raw), return_alphas=True)
    except Exception as exc:  # diffusers' converters raise bare ValueError/KeyError/AssertionError on foreign layouts
        text = str(exc).strip() or "no message"
        raise AdapterMismatch(f"LoRA {weights} ({fmt} layout) could not be converted for FLUX by diffusers "
                              f"({type(exc).__name__}: {text[:300]})" + (f"; {diagnosis}" if diagnosis else "")
                              + foreign_hint(raw), path=str(weights)) from None
    return _normalise(dict(sd)), (dict(alphas) if alphas else None)


def _from_diffusers_or_other(weights: Path, raw: dict, header: dict) -> LoraWeights:
    metadata = _adapter_metadata(weights, header)
    fmt = _guess_format(raw)
    sd, alphas = _convert_with_diffusers(weights, raw, fmt)
    configs = {}
    for component in ("transformer", "text_encoder"):
        part = {k.removeprefix(component + "."): v for k, v in metadata.items() if k.startswith(component + ".")}
        configs[component] = part or None
    return LoraWeights(path=weights, format=fmt, state_dict=sd, config=configs["transformer"],
                       text_encoder_config=configs["text_encoder"], network_alphas=alphas)


def _from_kohya(weights: Path, raw: dict) -> LoraWeights:
    problems = diagnose_kohya(raw)
    if problems:
        raise AdapterMismatch(f"LoRA {weights} (kohya layout): " + "; ".join(problems), path=str(weights))
    sd, _ = _convert_with_diffusers(weights, raw, "kohya")
    folded = _kohya_folded_scales(weights, raw)
    alphas = sorted({float(v.item()) for k, v in raw.items() if k.endswith(".alpha")})
    notes = [f"kohya layout: stored alpha {', '.join(f'{a:g}' for a in alphas)} (alpha/r folded into the weights "
             "by diffusers' converter)"] if alphas else ["kohya layout: no alpha stored (alpha = rank, scale 1)"]
    return LoraWeights(path=weights, format="kohya", state_dict=sd, folded_scales=folded, notes=notes)


def _kohya_folded_scales(weights: Path, raw: dict) -> dict[str, float]:
    """Which alpha/r diffusers' converter multiplies into each converted module, found by converting a probe
    file of ones with the same names, shapes of the split dimension and alphas (exact, and it follows the
    converter's own name mapping instead of copying it)."""
    import torch

    probe = {}
    for key, value in raw.items():
        if key.endswith(".lora_down.weight"):
            probe[key] = torch.ones(value.shape[0], 1)
        elif key.endswith(".lora_up.weight"):
            probe[key] = torch.ones(value.shape[0], value.shape[1])
        else:
            probe[key] = value
    sd, _ = _convert_with_diffusers(weights, probe, "kohya")
    return {k.removesuffix(".lora_A.weight"): float(v[0, 0]) * float(sd[k.replace(".lora_A.", ".lora_B.")][0, 0])
            for k, v in sd.items() if k.endswith(".lora_A.weight")}


def diagnose_kohya(raw: dict) -> list[str]:
    """What keeps a kohya file from loading into FLUX, in words; empty when diffusers' converter can take it."""
    names: dict[str, set[str]] = {}
    odd: list[str] = []
    for key in raw:
        name, _, part = key.partition(".")
        if part in ("lora_down.weight", "lora_up.weight", "alpha", "dora_scale"):
            names.setdefault(name, set()).add(part)
        else:
            odd.append(key)
    problems: list[str] = []
    sd_blocks = sorted({n for n in names if any(w in n for w in _SD_UNET_WORDS)})
    if sd_blocks:
        problems.append(f"{len(sd_blocks)} layers have Stable Diffusion UNet block names (e.g. {sd_blocks[0]}: "
                        "down_blocks/up_blocks/input_blocks...): it was made for a UNet model such as SD 1.5/SDXL, not FLUX "
                        "(kohya FLUX LoRAs name lora_unet_double_blocks_N_*/single_blocks_N_*)")
        return problems
    if odd:
        problems.append(f"{len(odd)} keys are not lora_down/lora_up/alpha tensors (e.g. {', '.join(sorted(odd)[:3])})")
    dora = sorted(n for n, parts in names.items() if "dora_scale" in parts)
    if dora:
        problems.append(f"{len(dora)} layers are kohya DoRA (dora_scale, e.g. {dora[0]}); diffusers' converter "
                        "would drop dora_scale and load a different adapter, so it is refused; save it from "
                        "PEFT with use_dora=True instead")
    unknown, shapes, te2 = [], [], []
    for name, parts in sorted(names.items()):
        if not {"lora_down.weight", "lora_up.weight"} <= parts:
            shapes.append(f"{name} has {'lora_up' if 'lora_down.weight' in parts else 'lora_down'} missing")
            continue
        down, up = raw[f"{name}.lora_down.weight"], raw[f"{name}.lora_up.weight"]
        if down.ndim != 2 or up.ndim != 2:
            shapes.append(f"{name} is a convolution LoRA {tuple(down.shape)} (FLUX has linear layers only)")
            continue
        if down.shape[0] != up.shape[1]:
            shapes.append(f"{name} lora_down rank {down.shape[0]} != lora_up rank {up.shape[1]}")
        if name.startswith("lora_te2_"):
            te2.append(name)
            continue
        if name.startswith(("lora_te1_", "lora_te_")):
            continue
        m = _KOHYA_NAME.match(name)
        if m is None:
            unknown.append(name)
        elif m.group("d") is not None:
            if m.group("dn") not in _KOHYA_DOUBLE or int(m.group("d")) >= _KOHYA_DOUBLE_BLOCKS:
                unknown.append(name)
            elif m.group("dn").endswith("qkv") and up.shape[0] % 3:
                shapes.append(f"{name} lora_up has {up.shape[0]} rows, not divisible into q, k, v")
        elif m.group("s") is not None:
            if m.group("sn") not in _KOHYA_SINGLE or int(m.group("s")) >= _KOHYA_SINGLE_BLOCKS:
                unknown.append(name)
            elif m.group("sn") == "linear1" and up.shape[0] != sum(_LINEAR1_DIMS):
                shapes.append(f"{name} lora_up has {up.shape[0]} rows; diffusers splits single_blocks linear1 into "
                              f"FLUX.1's q, k, v, mlp = {'+'.join(map(str, _LINEAR1_DIMS))} = {sum(_LINEAR1_DIMS)} "
                              "rows, so this file was made for a FLUX of another size")
        elif m.group("o") not in _KOHYA_OTHER:
            unknown.append(name)
    if unknown:
        problems.append(f"{len(unknown)} layers have names diffusers' FLUX converter does not know and would drop "
                        f"(e.g. {', '.join(unknown[:3])})")
    if te2:
        problems.append(f"{len(te2)} layers are for a second text encoder (e.g. {te2[0]}); FLUX.1 LoRAs may train "
                        "CLIP-L (lora_te1_) only")
    if shapes:
        problems.append(f"{len(shapes)} layers have impossible shapes ({'; '.join(shapes[:3])})")
    return problems


def _guess_format(raw: dict) -> str:
    keys = list(raw)
    if any("processor" in k for k in keys):
        return "xlabs"
    if all(k.startswith(("transformer.", "text_encoder.")) for k in keys):
        return "diffusers"
    return "other"


def foreign_hint(keys) -> str:
    """A hint for keys that match nothing: SD UNet names (down_blocks...) are told apart from FLUX ones."""
    names = list(keys)
    if any(w in k for k in names for w in _SD_UNET_WORDS):
        return " (its layer names are those of a UNet model such as SD 1.5/SDXL, not FLUX)"
    if any("double_blocks" in k or "single_blocks" in k for k in names):
        return " (its layer names are FLUX ones in the original BFL/kohya naming)"
    return ""


# ---------------------------------------------------------------- trigger words
def _ai_toolkit_config(weights: Path) -> dict | None:
    """The ai-toolkit / Replicate / fal ``config.yaml`` (or .yml) beside the file, parsed safely, if any."""
    for name in ("config.yaml", "config.yml"):
        path = weights.parent / name
        if path.is_file():
            import yaml

            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError) as exc:  # a stray file must not block a good LoRA
                logger.warning("LoRA %s: %s beside it is not valid YAML (%s); no trigger words read from it",
                               weights, path.name, str(exc).splitlines()[0])
                return None
            # ai-toolkit writes {job: ..., config: {name, process: [{trigger_word, ...}]}}
            if isinstance(data, dict) and ({"job", "config"} & set(data) or _find_key(data, "trigger_word")):
                return data
    return None


def _find_key(data, key: str):
    """First value of ``key`` anywhere in nested dicts/lists (ai-toolkit puts trigger_word in config.process[0])."""
    if isinstance(data, dict):
        if data.get(key):
            return data[key]
        values = data.values()
    elif isinstance(data, list):
        values = data
    else:
        return None
    for value in values:
        found = _find_key(value, key)
        if found:
            return found
    return None


def _split_words(text: str) -> list[str]:
    return [w.strip() for w in re.split(r"[,，]", text) if w.strip()]


def trigger_words(weights: Path, header: dict) -> tuple[list[str], str]:
    """Trigger words the trainer recorded: ai-toolkit ``config.yaml`` (``trigger_word``), SAI model spec
    ``modelspec.trigger_phrase``, kohya ``ss_tag_frequency`` (dataset folders ``<repeats>_<token>``, else the
    caption tag present in the most images). Returns (words, where they were found)."""
    config = _ai_toolkit_config(weights)
    if config is not None:
        word = _find_key(config, "trigger_word")
        if isinstance(word, str) and word.strip():
            return _split_words(word), "config.yaml trigger_word"
    if header.get("modelspec.trigger_phrase"):
        return _split_words(header["modelspec.trigger_phrase"]), "modelspec.trigger_phrase"
    if header.get("ss_tag_frequency"):
        try:
            freq = json.loads(header["ss_tag_frequency"])
        except json.JSONDecodeError:
            return [], ""
        if not isinstance(freq, dict):
            return [], ""
        folders = [m.group(1).strip() for d in freq if (m := re.match(r"^\d+_(.+)$", str(d)))]
        if folders:
            return sorted(set(folders)), "ss_tag_frequency dataset folders"
        counts: Counter = Counter()
        for tags in freq.values():
            if isinstance(tags, dict):
                counts.update({str(t).strip(): int(n) for t, n in tags.items() if isinstance(n, (int, float))})
        if counts:
            return [counts.most_common(1)[0][0]], "ss_tag_frequency most frequent tag"
    return [], ""
