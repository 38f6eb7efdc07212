"""Reading LoRA files: find the weights, recognise the format, convert to diffusers naming, check the fit.

Why our own reader in front of diffusers: diffusers reads a folder's ``pytorch_lora_weights.safetensors``
and converts kohya/xlabs/... files, but it does not read PEFT's ``adapter_config.json`` (so ``lora_alpha``
and ``r`` would be lost and the strength silently wrong), it mistakes PEFT's ``base_model.model.`` keys for
another format, and it only *logs* keys it could not match. Here every LoRA is read once into a
:class:`LoraWeights` (diffusers naming + the PEFT config when there is one), and :func:`check_fits` proves
that every tensor has a layer of the right shape before anything touches the model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdapterCorrupt, AdapterMismatch, AdapterNotFound

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
_PEFT_PREFIX = "base_model.model."
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
#: LoraConfig fields we take from a PEFT adapter_config.json (the rest describe training, not the weights)
_PEFT_CONFIG_KEYS = ("r", "lora_alpha", "target_modules", "rank_pattern", "alpha_pattern", "use_rslora",
                     "use_dora", "lora_bias", "fan_in_fan_out", "exclude_modules")
_LORA_KEY = re.compile(r"^transformer\.(?P<module>.+)\.lora_(?P<which>[AB])\.weight$")


@dataclass
class LoraWeights:
    """One LoRA file, read and converted, ready to be attached. Never re-read after this."""

    path: Path  # the weights file
    format: str  # diffusers | peft | kohya | xlabs | other (converted by diffusers)
    state_dict: dict  # diffusers naming: transformer.<module>.lora_A.weight / lora_B.weight
    config: dict | None = None  # LoraConfig kwargs (PEFT adapter_config.json or diffusers metadata)
    network_alphas: dict | None = None  # per-layer alphas stored in the file (some diffusers-format files)
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def modules(self) -> list[str]:
        return sorted({m.group("module") for k in self.state_dict if (m := _LORA_KEY.match(k))})

    @property
    def rank(self) -> int:
        ranks = [v.shape[0] for k, v in self.state_dict.items() if k.endswith("lora_A.weight")]
        return max(ranks) if ranks else 0

    @property
    def alpha(self) -> float | None:
        """The training alpha, when the file states one (PEFT config or alpha keys); None: alpha = rank."""
        if self.config and "lora_alpha" in self.config:
            return float(self.config["lora_alpha"])
        if self.network_alphas:
            return float(next(iter(self.network_alphas.values())))
        return None


def resolve_weights_file(path: str | Path) -> Path:
    """A LoRA folder or file -> the one weights file to read. Folders prefer the diffusers layout."""
    p = Path(path)
    if not p.exists():
        raise AdapterNotFound(f"LoRA {p} does not exist (check the path; task LoRA paths are relative to "
                              "the models folder)", path=str(p))
    if p.is_file():
        return p
    for name in (DIFFUSERS_WEIGHTS, PEFT_WEIGHTS):
        if (p / name).is_file():
            return p / name
    candidates = sorted(p.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(sorted(x.name for x in p.iterdir())) or "empty"
    raise AdapterNotFound(
        f"LoRA folder {p} has no {DIFFUSERS_WEIGHTS} or {PEFT_WEIGHTS}"
        + (" and several .safetensors files: name one" if candidates else "")
        + f" (folder holds: {listing})",
        path=str(p),
    )


def read_lora(path: str | Path) -> LoraWeights:
    """Read a LoRA folder or file in any supported format; raise a typed error naming the file otherwise."""
    weights = resolve_weights_file(path)
    if weights.suffix in _PICKLE_SUFFIXES:
        raise AdapterCorrupt(f"LoRA {weights}: pickle checkpoints are not loaded (they can run code); "
                             "convert it to .safetensors", path=str(weights))
    raw, header = _read_safetensors(weights)
    size = weights.stat().st_size
    if not raw:
        raise AdapterCorrupt(f"LoRA {weights} holds no tensors", path=str(weights))
    if all(k.startswith(_PEFT_PREFIX) for k in raw):
        return _from_peft(weights, raw, size)
    return _from_diffusers_or_other(weights, raw, header, size)


def _read_safetensors(weights: Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        with safe_open(str(weights), framework="pt") as f:
            header = f.metadata() or {}
        return load_file(str(weights), device="cpu"), header
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise AdapterCorrupt(f"LoRA {weights} is not a readable .safetensors file ({exc}); "
                             "the download may be incomplete", path=str(weights)) from None


def _from_peft(weights: Path, raw: dict, size: int) -> LoraWeights:
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
    if isinstance(config.get("target_modules"), str):  # a regex in PEFT; keep as is
        pass
    elif "target_modules" in config:
        config["target_modules"] = sorted(config["target_modules"])
    sd = {"transformer." + k[len(_PEFT_PREFIX):]: v for k, v in raw.items()}
    sd = {k.replace(".default.weight", ".weight"): v for k, v in sd.items()}  # adapter name left in by some tools
    notes = [f"PEFT layout: r={r}, lora_alpha={alpha:g} from {cfg_path.name} (scale x{alpha / r:g})"]
    return LoraWeights(path=weights, format="peft", state_dict=sd, config=config, size_bytes=size, notes=notes)


def _from_diffusers_or_other(weights: Path, raw: dict, header: dict, size: int) -> LoraWeights:
    from diffusers import FluxPipeline

    metadata = None
    if header.get("lora_adapter_metadata"):
        try:
            metadata = json.loads(header["lora_adapter_metadata"])
        except json.JSONDecodeError:
            raise AdapterCorrupt(f"LoRA {weights}: its lora_adapter_metadata header is not JSON",
                                 path=str(weights)) from None
    fmt = _guess_format(raw)
    try:
        sd, alphas, _ = FluxPipeline.lora_state_dict(dict(raw), return_alphas=True, return_lora_metadata=True)
    except Exception as exc:  # diffusers' converters raise bare ValueError/KeyError on foreign layouts
        raise AdapterMismatch(f"LoRA {weights} ({fmt} layout) could not be converted for FLUX: {exc}"
                              + _foreign_hint(raw), path=str(weights)) from None
    config = None
    if metadata:
        config = {k.removeprefix("transformer."): v for k, v in metadata.items() if k.startswith("transformer.")}
    return LoraWeights(path=weights, format=fmt, state_dict=dict(sd), config=config or None,
                       network_alphas=dict(alphas) if alphas else None, size_bytes=size)


def _guess_format(raw: dict) -> str:
    keys = list(raw)
    if any(".lora_down.weight" in k for k in keys):
        return "kohya"
    if any("processor" in k for k in keys):
        return "xlabs"
    if all(k.startswith(("transformer.", "text_encoder.")) for k in keys):
        return "diffusers"
    return "other"


def _foreign_hint(keys) -> str:
    text = " ".join(list(keys)[:50])
    if "lora_unet" in text or "down_blocks" in text or "up_blocks" in text or "mid_block" in text:
        return " (its layer names are those of a UNet model such as SD 1.5/SDXL, not FLUX)"
    return ""


def linear_shapes(transformer) -> dict[str, tuple[int, int]]:
    """Module name -> (in_features, out_features) of every linear layer, seen through PEFT wrappers."""
    import torch

    shapes: dict[str, tuple[int, int]] = {}
    for name, module in transformer.named_modules():
        if name.endswith(".base_layer"):
            continue
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear):
            shapes[name] = (base.in_features, base.out_features)
    return shapes


def check_fits(lora: LoraWeights, shapes: dict[str, tuple[int, int]]) -> None:
    """Raise AdapterMismatch unless every tensor of the file lands on a layer of the right shape."""
    unmatched: list[str] = []
    bad_shape: list[str] = []
    for key, tensor in lora.state_dict.items():
        m = _LORA_KEY.match(key)
        if not m:
            unmatched.append(key)
            continue
        module = m.group("module")
        if module not in shapes:
            unmatched.append(key)
            continue
        in_f, out_f = shapes[module]
        if tensor.ndim != 2:
            bad_shape.append(f"{key} {tuple(tensor.shape)}")
        elif m.group("which") == "A" and tensor.shape[1] != in_f:
            bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer in_features {in_f}")
        elif m.group("which") == "B" and tensor.shape[0] != out_f:
            bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer out_features {out_f}")
    if not unmatched and not bad_shape:
        return
    parts = []
    if unmatched:
        parts.append(f"{len(unmatched)} of {len(lora.state_dict)} tensors match no layer of the loaded FLUX "
                     f"transformer (e.g. {', '.join(unmatched[:3])})")
    if bad_shape:
        parts.append(f"{len(bad_shape)} tensors do not fit their layer's shape (e.g. {', '.join(bad_shape[:2])})")
    hint = _foreign_hint(unmatched) or (" (it was probably made for another base model)" if bad_shape else "")
    raise AdapterMismatch(f"LoRA {lora.path}: " + "; ".join(parts) + hint, path=str(lora.path))
