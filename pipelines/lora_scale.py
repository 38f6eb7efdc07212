"""The effective per-module LoRA scale at strength 1.0: what ``W + scale * B @ A`` multiplies by.

Why here and not inside the fused strategy: PEFT computes this number inside its layers (``scaling``), and a
strategy that writes ``W0 + s * scale * B @ A`` itself must compute the very same number or the picture
differs from PEFT's. The rules mirror PEFT and diffusers' ``get_peft_kwargs``:

- a PEFT ``adapter_config.json`` or diffusers ``lora_adapter_metadata``: ``lora_alpha / r``
  (``lora_alpha / sqrt(r)`` with ``use_rslora``), ``alpha_pattern`` / ``rank_pattern`` per module;
- alphas stored in the file (``network_alphas``, e.g. some kohya conversions): ``alpha / rank`` per module;
- neither: 1.0 (the diffusers convention ``W + B @ A``: alpha == rank).

One small function on purpose: when ``LoraWeights`` gains its own method for this (the LoRA-formats work),
this is the one place to swap.
"""

from __future__ import annotations

import math
import re


def _pattern_value(patterns: dict | None, module: str):
    """PEFT's pattern lookup: a key matches a module name exactly or as a dotted suffix (or as a regex)."""
    for key, value in (patterns or {}).items():
        if module == key or module.endswith("." + key):
            return value
        try:
            if re.fullmatch(rf"(.*\.)?(?:{key})", module):
                return value
        except re.error:
            continue
    return None


def module_scale(lora, module: str, rank: int, prefix: str = "transformer") -> float:
    """Scale of ``module`` (name inside its component, e.g. ``transformer_blocks.0.attn.to_q``)."""
    cfg = lora.config or {}
    if "lora_alpha" in cfg:
        alpha = _pattern_value(cfg.get("alpha_pattern"), module)
        alpha = float(cfg["lora_alpha"] if alpha is None else alpha)
        return alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    alphas = lora.network_alphas or {}
    if alphas:
        key = f"{prefix}.{module}.alpha"
        if key in alphas:
            return float(alphas[key]) / rank
        # diffusers: modules without their own alpha get the most common one (``get_peft_kwargs``)
        values = [float(v) for v in alphas.values()]
        return max(set(values), key=values.count) / rank
    return 1.0
