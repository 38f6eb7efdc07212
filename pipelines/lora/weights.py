"""The state-dict contract every LoRA is read into (``LoraWeights``), whatever tool wrote the file.

Why its own module: the readers (``files.py``: find, hash, check the fit; ``formats.py``: recognise and
convert each tool's layout) and the adapter strategies all speak this one form, so none of them needs the
others to know what a LoRA is.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

DIFFUSERS_WEIGHTS = "pytorch_lora_weights.safetensors"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
#: components a FLUX LoRA may touch, as diffusers names them (the pipeline attribute and the key prefix)
COMPONENTS = ("transformer", "text_encoder")
COMPONENT_LABELS = {"transformer": "transformer", "text_encoder": "CLIP text encoder"}
#: <component>.<module>.lora_A.weight | lora_B.weight | lora_magnitude_vector (DoRA)
LORA_KEY = re.compile(r"^(?P<component>transformer|text_encoder)\.(?P<module>.+)"
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

    ``state_dict`` contract (what every :class:`~pipelines.lora.peft_adapters.AdapterStrategy` may rely on), diffusers
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
                       if (m := LORA_KEY.match(k)) and m.group("component") == component})

    @property
    def modules(self) -> list[str]:
        """Transformer modules (the usual case); see :meth:`modules_of` for the text encoder."""
        return self.modules_of("transformer")

    @property
    def components(self) -> list[str]:
        present = {m.group("component") for k in self.state_dict if (m := LORA_KEY.match(k))}
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
