"""Reading LoRA files: find the weights, hash them, hand them to the format reader, check the fit.

Why our own reader in front of diffusers: diffusers reads a folder's ``pytorch_lora_weights.safetensors``
and converts kohya/xlabs/... files, but it does not read PEFT's ``adapter_config.json`` (so ``lora_alpha``,
``use_rslora``, ``use_dora`` and the rank/alpha patterns would be lost and the strength silently wrong), it
mistakes PEFT's ``base_model.model.`` keys for another format, it drops keys it cannot convert with only a
log line, and it only *logs* keys it could not match. Here every LoRA is read once into a
:class:`LoraWeights` (diffusers naming + the configs), and :func:`check_fits` proves that every tensor has
a layer of the right shape in the component it is meant for before anything touches the model.
Formats are recognised and converted in ``lora_formats.py``; ``lora inspect`` lives in ``lora_inspect.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .errors import AdapterCorrupt, AdapterMismatch, AdapterNotFound

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
#: components a FLUX LoRA may touch, as diffusers names them (the pipeline attribute and the key prefix)
COMPONENTS = ("transformer", "text_encoder")
COMPONENT_LABELS = {"transformer": "transformer", "text_encoder": "CLIP text encoder"}
#: <component>.<module>.lora_A.weight | lora_B.weight | lora_magnitude_vector (DoRA)
_LORA_KEY = re.compile(r"^(?P<component>transformer|text_encoder)\.(?P<module>.+)"
                       r"\.(?P<which>lora_A\.weight|lora_B\.weight|lora_magnitude_vector)$")
#: numbers that count blocks/layers (``transformer_blocks.3.``) as opposed to those inside a layer's own
#: name (``ff.net.0.proj``, ``to_out.0``): only the former are folded into ``*`` when modules are grouped
_BLOCK_INDEX = re.compile(r"((?:^|\.)(?:transformer_blocks|single_transformer_blocks|layers))\.\d+(?=\.)")


def module_group(module: str) -> str:
    """``transformer_blocks.3.ff.net.0.proj`` -> ``transformer_blocks.*.ff.net.0.proj`` (layer digits kept)."""
    return _BLOCK_INDEX.sub(r"\1.*", module)


@dataclass
class LoraWeights:
    """One LoRA file, read and converted, ready to be attached. Never re-read after this.

    ``state_dict`` contract (what every :class:`~pipelines.adapters.AdapterStrategy` may rely on), diffusers
    naming with the component as prefix, modules named exactly as in that pipeline component:

    - ``transformer.<module>.lora_A.weight`` ``(r, in_features)`` and ``.lora_B.weight`` ``(out_features, r)``
    - ``text_encoder.<module>.lora_A.weight`` / ``.lora_B.weight``: the CLIP text encoder (``pipe.text_encoder``,
      module names as in ``pipe.text_encoder.named_modules()``, e.g. ``encoder.layers.0.self_attn.q_proj``)
    - ``<component>.<module>.lora_magnitude_vector`` ``(out_features,)``: DoRA's magnitude (PEFT
      ``use_dora=True``); with DoRA the update is not ``B @ A`` alone, see PEFT's ``DoraLinearLayer``.

    The contribution of one module at strength ``s`` is ``s * scale_factors()[key] * (B @ A)`` (plain LoRA),
    where ``key`` is ``<component>.<module>``. Scale factors follow PEFT: ``lora_alpha / r``, or
    ``lora_alpha / sqrt(r)`` with rsLoRA, with ``rank_pattern``/``alpha_pattern`` per module; kohya files
    have their ``alpha / r`` already folded into A and B by diffusers' converter, so their factor is 1.0
    and :attr:`folded_scales` records what was folded (``effective_scales()`` = both multiplied).
    """

    path: Path  # the weights file
    format: str  # diffusers | peft | kohya | ai-toolkit | xlabs | other (converted by diffusers)
    state_dict: dict  # see the class docstring
    config: dict | None = None  # transformer LoraConfig kwargs (PEFT adapter_config.json or diffusers metadata)
    network_alphas: dict | None = None  # per-layer alphas stored in the file (some diffusers-format files)
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    text_encoder_config: dict | None = None  # LoraConfig kwargs of the text-encoder part, when stated
    sha256: str = ""  # of the weights file's bytes, computed once when it is read
    metadata: dict = field(default_factory=dict)  # the safetensors header's string metadata
    #: ``<component>.<module>`` -> the ``alpha / r`` a converter already multiplied into A and B (kohya)
    folded_scales: dict[str, float] = field(default_factory=dict)
    trigger_words: list[str] = field(default_factory=list)  # what the trainer recorded (kohya ss_*, config.yaml)
    trigger_source: str = ""  # where the trigger words were found

    @property
    def short_hash(self) -> str:
        """sha256 of the file, first 12 hex digits: printed by ``lora inspect`` and carried by every result."""
        return self.sha256[:12]

    def modules_of(self, component: str) -> list[str]:
        return sorted({m.group("module") for k in self.state_dict
                       if (m := _LORA_KEY.match(k)) and m.group("component") == component})

    @property
    def modules(self) -> list[str]:
        """Transformer modules (the usual case); see :meth:`modules_of` for the text encoder."""
        return self.modules_of("transformer")

    @property
    def components(self) -> list[str]:
        present = {m.group("component") for k in self.state_dict if (m := _LORA_KEY.match(k))}
        return [c for c in COMPONENTS if c in present]

    def component_state_dict(self, component: str) -> dict:
        """The part of ``state_dict`` for one component, keys without the component prefix."""
        prefix = component + "."
        return {k[len(prefix):]: v for k, v in self.state_dict.items() if k.startswith(prefix)}

    def component_config(self, component: str) -> dict | None:
        return self.config if component == "transformer" else self.text_encoder_config

    @property
    def is_dora(self) -> bool:
        return any(k.endswith(".lora_magnitude_vector") for k in self.state_dict)

    def ranks(self) -> dict[str, int]:
        """``<component>.<module>`` -> r (rows of lora_A)."""
        return {k.removesuffix(".lora_A.weight"): v.shape[0] for k, v in self.state_dict.items()
                if k.endswith(".lora_A.weight") and getattr(v, "ndim", 0) == 2}

    @property
    def rank(self) -> int:
        ranks = self.ranks().values()
        return max(ranks) if ranks else 0

    @property
    def alpha(self) -> float | None:
        """The training alpha, when the file states one (PEFT config or alpha keys); None: alpha = rank."""
        if self.config and "lora_alpha" in self.config:
            return float(self.config["lora_alpha"])
        if self.network_alphas:
            return float(next(iter(self.network_alphas.values())))
        return None

    def lora_config(self, component: str):
        """The ``peft.LoraConfig`` diffusers builds for ``component`` when this file is loaded (same function,
        same inputs), or None when the file does not touch ``component``."""
        from diffusers.utils.peft_utils import _create_lora_config

        sd = self.component_state_dict(component)
        if not sd:
            return None
        if component == "transformer":
            # diffusers' load_lora_adapter: "^<module>.lora_B.weight" -> r for every B matrix
            rank = {f"^{k}": v.shape[1] for k, v in sd.items() if "lora_B" in k and v.ndim > 1}
        else:  # diffusers' _load_lora_into_text_encoder: attention/MLP projections only
            rank = {k: v.shape[1] for k, v in sd.items()
                    if k.endswith(".lora_B.weight") and k.removesuffix(".lora_B.weight").endswith(
                        (".q_proj", ".k_proj", ".v_proj", ".out_proj", ".fc1", ".fc2"))}
        alphas = None
        if self.network_alphas:
            prefix = component + "."
            alphas = {k[len(prefix):]: v for k, v in self.network_alphas.items() if k.startswith(prefix)} or None
        config = self.component_config(component)
        return _create_lora_config(sd, alphas, dict(config) if config else None, rank,
                                   is_unet=component == "transformer")

    def scale_factors(self) -> dict[str, float]:
        """``<component>.<module>`` -> the factor PEFT multiplies ``B @ A`` (of ``state_dict``) by at strength 1.0.

        Exactly what the loaded PEFT layers hold as ``scaling`` (the adapter strategy checks this after
        loading): ``lora_alpha / r``, or ``lora_alpha / sqrt(r)`` with rsLoRA, ``r``/``lora_alpha`` taken from
        ``rank_pattern``/``alpha_pattern`` where a pattern matches the module (PEFT's ``get_pattern_key``).
        FusedAdapters and ``lora inspect`` both use this.
        """
        from peft.utils.other import get_pattern_key

        out: dict[str, float] = {}
        for component in self.components:
            cfg = self.lora_config(component)
            for module in self.modules_of(component):
                r_key = get_pattern_key(cfg.rank_pattern.keys(), module)
                a_key = get_pattern_key(cfg.alpha_pattern.keys(), module)
                r = cfg.rank_pattern.get(r_key, cfg.r)
                alpha = cfg.alpha_pattern.get(a_key, cfg.lora_alpha)
                out[f"{component}.{module}"] = alpha / math.sqrt(r) if cfg.use_rslora else alpha / r
        return out

    def effective_scales(self) -> dict[str, float]:
        """What strength 1.0 really multiplies each module's trained ``B @ A`` by (scale factor x folded alpha/r)."""
        return {k: v * self.folded_scales.get(k, 1.0) for k, v in self.scale_factors().items()}

    def scale_summary(self) -> dict[str, float]:
        """Effective scale per module group (block numbers folded into ``*``); ``{"all": x}`` when uniform."""
        scales = self.effective_scales()
        distinct = {round(v, 6) for v in scales.values()}
        if len(distinct) <= 1:
            return {"all": distinct.pop()} if distinct else {}
        groups: dict[str, set[float]] = {}
        for key, value in scales.items():
            groups.setdefault(module_group(key), set()).add(round(value, 6))
        out = {}
        for group, values in sorted(groups.items()):
            if len(values) == 1:
                out[group] = values.pop()
            else:  # one group, several scales: name the modules one by one
                out.update({k: round(v, 6) for k, v in sorted(scales.items()) if module_group(k) == group})
        return out


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
    from .lora_formats import convert

    weights = resolve_weights_file(path)
    if weights.suffix in _PICKLE_SUFFIXES:
        raise AdapterCorrupt(f"LoRA {weights}: pickle checkpoints are not loaded (they can run code); "
                             "convert it to .safetensors", path=str(weights))
    raw, header, digest, size = read_safetensors(weights)
    if not raw:
        raise AdapterCorrupt(f"LoRA {weights} holds no tensors", path=str(weights))
    lora = convert(weights, raw, header)
    lora.sha256, lora.size_bytes, lora.metadata = digest, size, dict(header)
    return lora


def read_safetensors(weights: Path) -> tuple[dict, dict, str, int]:
    """(tensors, header metadata, sha256 hex, size): the file is read once, hashed from the same bytes."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = weights.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n]).get("__metadata__") or {}
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, struct.error, UnicodeDecodeError) as exc:
        raise AdapterCorrupt(f"LoRA {weights} is not a readable .safetensors file ({exc}); "
                             "the download may be incomplete", path=str(weights)) from None
    return tensors, header, hashlib.sha256(data).hexdigest(), len(data)


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """Module name -> (in_features, out_features) of every linear layer, seen through PEFT wrappers."""
    import torch

    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if name.endswith(".base_layer"):
            continue
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear):
            shapes[name] = (base.in_features, base.out_features)
    return shapes


def check_fits(lora: LoraWeights, shapes: dict[str, dict[str, tuple[int, int]]] | dict[str, tuple[int, int]]) -> None:
    """Raise AdapterMismatch unless every tensor of the file lands on a layer of the right shape.

    ``shapes``: component -> :func:`linear_shapes` of it (``{"transformer": ..., "text_encoder": ...}``); a
    plain module -> shape dict means the transformer alone (the older call form).
    """
    from .lora_formats import foreign_hint

    if shapes and not any(isinstance(v, dict) for v in shapes.values()):
        shapes = {"transformer": shapes}
    unmatched: list[str] = []
    bad_shape: list[str] = []
    for key, tensor in lora.state_dict.items():
        m = _LORA_KEY.match(key)
        layers = shapes.get(m.group("component")) if m else None
        if not m or layers is None or m.group("module") not in layers:
            unmatched.append(key)
            continue
        in_f, out_f = layers[m.group("module")]
        which = m.group("which")
        if which == "lora_magnitude_vector":
            if tuple(tensor.shape) != (out_f,):
                bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer out_features {out_f}")
        elif tensor.ndim != 2:
            bad_shape.append(f"{key} {tuple(tensor.shape)}")
        elif which == "lora_A.weight" and tensor.shape[1] != in_f:
            bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer in_features {in_f}")
        elif which == "lora_B.weight" and tensor.shape[0] != out_f:
            bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer out_features {out_f}")
    if not unmatched and not bad_shape:
        return
    parts = []
    if unmatched:
        where = " or ".join(f"the {COMPONENT_LABELS[c]}" for c in shapes) or "the model"
        parts.append(f"{len(unmatched)} of {len(lora.state_dict)} tensors match no layer of {where} of the loaded "
                     f"FLUX model (e.g. {', '.join(unmatched[:3])})")
    if bad_shape:
        parts.append(f"{len(bad_shape)} tensors do not fit their layer's shape (e.g. {', '.join(bad_shape[:2])})")
    hint = foreign_hint(unmatched) or (" (it was probably made for another base model)" if bad_shape else "")
    raise AdapterMismatch(f"LoRA {lora.path}: " + "; ".join(parts) + hint, path=str(lora.path))
