"""One layer's tensors in a kohya/LyCORIS/ComfyUI file -> its delta recipe, with each tool's scale rule.

Why here: the same per-layer suffixes appear under every naming family (``lora_unet_*``, ``lycoris_*``,
``diffusion_model.*``, ``lora_transformer_*``), and the math of each suffix set is fixed by the tool that
writes it, as ComfyUI and Forge read it (the readers users compare us with):

- LoRA ``lora_down``/``lora_up`` (kohya) or ``lora_A``/``lora_B`` (OneTrainer COMFY): ``alpha / rank`` with
  rank = rows of ``down``; no ``alpha``: 1.
- LyCORIS LoKr ``lokr_w1`` | ``lokr_w1_a``+``lokr_w1_b``, ``lokr_w2`` | ``lokr_w2_a``+``lokr_w2_b`` (+ Tucker core
  ``lokr_t2``): ``alpha / rank`` where rank is the decomposed factor's (``w2``'s when both are); when both
  factors are full matrices LyCORIS trains and stores them at scale 1 whatever ``alpha`` says.
- LyCORIS LoHa ``hada_w1_a/b``, ``hada_w2_a/b``: ``alpha / rank``, rank = rows of ``hada_w1_b``.
- ComfyUI ``diff`` (a whole weight, or a norm's scale) and ``diff_b`` (a bias): added as stored.
- ``dora_scale`` (LyCORIS / kohya / OneTrainer weight decomposition) is refused, see :data:`DORA_SCALE_REFUSAL`.
"""

from __future__ import annotations

from .deltas import Full, Hadamard, Kronecker, LowRank, Recipe

LORA_SUFFIXES = ("lora_down.weight", "lora_up.weight", "lora_A.weight", "lora_B.weight")
LOKR_SUFFIXES = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
LOHA_SUFFIXES = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
OTHER_SUFFIXES = ("alpha", "diff", "diff_b", "dora_scale")
#: every per-layer suffix we read, longest first (so ``lokr_w1_a`` is not taken for ``lokr_w1``)
SUFFIXES = tuple(sorted(LORA_SUFFIXES + LOKR_SUFFIXES + LOHA_SUFFIXES + OTHER_SUFFIXES, key=len, reverse=True))
#: suffixes of adapter kinds FLUX files may carry that have no exact linear-layer math here
UNSUPPORTED = {"oft_blocks": "OFT", "oft_diag": "OFT", "oft_R.weight": "OFT", "a1.weight": "GLoRA",
               "b1.weight": "GLoRA", "lora_mid.weight": "LoCon (Tucker, for convolutions)", "w_norm": "norm",
               "set_weight": "set-weight"}

DORA_SCALE_REFUSAL = ("kohya/LyCORIS DoRA (dora_scale) is refused: its magnitude is stored per input column "
                      "(LyCORIS' convention; PEFT's DoRA layers hold one per output row, so they cannot load it) and "
                      "the tools that read it disagree on what a strength other than 1 means (LyCORIS rescales the "
                      "magnitude's effect, ComfyUI blends the merged weight), so any reading here would be a guess; "
                      "save the adapter from PEFT with use_dora=True instead")


class LayerError(ValueError):
    """This layer's tensors do not form a recipe (missing half, mismatched shapes, unsupported kind)."""


def split_key(key: str) -> tuple[str, str] | None:
    """``lora_unet_x.lokr_w1`` -> (``lora_unet_x``, ``lokr_w1``); None when the suffix is not a known one."""
    for suffix in SUFFIXES:
        if key.endswith("." + suffix):
            return key[: -len(suffix) - 1], suffix
    return None


def unsupported_kind(key: str) -> str | None:
    """The adapter kind a key belongs to when it is one we know but cannot apply (OFT, GLoRA, ...)."""
    return next((kind for suffix, kind in UNSUPPORTED.items() if key.endswith("." + suffix)), None)


def _alpha(params: dict) -> float | None:
    value = params.get("alpha")
    return None if value is None else float(value.float().reshape(-1)[0].item())


def _scale(alpha: float | None, rank: int | None) -> float:
    return alpha / rank if alpha is not None and rank else 1.0


def layer_recipes(name: str, params: dict) -> tuple[Recipe | None, Recipe | None]:
    """(weight recipe, bias recipe) of one layer. Raises :class:`LayerError` naming what is wrong."""
    if "dora_scale" in params:
        raise LayerError(DORA_SCALE_REFUSAL)
    kinds = [k for k, suffixes in (("LoRA", LORA_SUFFIXES), ("LoKr", LOKR_SUFFIXES), ("LoHa", LOHA_SUFFIXES),
                                   ("diff", ("diff",))) if any(s in params for s in suffixes)]
    if len(kinds) > 1:
        raise LayerError(f"{name} holds both {kinds[0]} and {kinds[1]} tensors for one weight")
    bias = Full(diff=params["diff_b"]) if "diff_b" in params else None
    if not kinds:
        if bias is None:
            raise LayerError(f"{name} has an alpha but no weights")
        return None, bias
    build = {"LoRA": _lora, "LoKr": _lokr, "LoHa": _loha, "diff": _diff}[kinds[0]]
    return build(name, params), bias


def _need(name: str, params: dict, *keys: str):
    missing = [k for k in keys if k not in params]
    if missing:
        raise LayerError(f"{name} has {', '.join(missing)} missing")
    return [params[k] for k in keys]


def _lora(name: str, params: dict) -> LowRank:
    down_key = "lora_down.weight" if "lora_down.weight" in params or "lora_up.weight" in params else "lora_A.weight"
    up_key = "lora_up.weight" if down_key == "lora_down.weight" else "lora_B.weight"
    down, up = _need(name, params, down_key, up_key)
    if down.ndim != 2 or up.ndim != 2:
        raise LayerError(f"{name} is a convolution LoRA {tuple(down.shape)} (FLUX has linear layers only)")
    if down.shape[0] != up.shape[1]:
        raise LayerError(f"{name} {down_key.split('.')[0]} rank {down.shape[0]} != {up_key.split('.')[0]} rank "
                         f"{up.shape[1]}")
    return LowRank(up=up, down=down, scale=_scale(_alpha(params), down.shape[0]))


def _pair(name: str, params: dict, full: str, a: str, b: str):
    if full in params:
        return params[full], None, None
    a_t, b_t = _need(name, params, a, b)
    return None, a_t, b_t


def _lokr(name: str, params: dict) -> Kronecker:
    w1, w1_a, w1_b = _pair(name, params, "lokr_w1", "lokr_w1_a", "lokr_w1_b")
    w2, w2_a, w2_b = _pair(name, params, "lokr_w2", "lokr_w2_a", "lokr_w2_b")
    t2 = params.get("lokr_t2")
    for label, t in (("lokr_w1", w1), ("lokr_w2", w2), ("lokr_w1_a", w1_a), ("lokr_w2_a", w2_a)):
        if t is not None and t.ndim != 2:
            raise LayerError(f"{name} {label} has shape {tuple(t.shape)}: a convolution LoKr (FLUX has linear "
                             "layers only)")
    if t2 is not None:
        if t2.ndim > 2 and any(s != 1 for s in t2.shape[2:]):
            raise LayerError(f"{name} lokr_t2 {tuple(t2.shape)} is a convolution Tucker core")
        if w2 is not None:
            raise LayerError(f"{name} has both lokr_w2 and a Tucker core lokr_t2")
    recipe = Kronecker(w1=w1, w1_a=w1_a, w1_b=w1_b, w2=w2, w2_a=w2_a, w2_b=w2_b, t2=t2)
    recipe.scale = _scale(_alpha(params), recipe.rank)  # both factors full: scale 1 (LyCORIS, ComfyUI)
    try:
        recipe.shape  # noqa: B018 - the factor shapes must chain
        if w1 is None and w1_a.shape[1] != w1_b.shape[0]:
            raise LayerError(f"{name} lokr_w1_a {tuple(w1_a.shape)} and lokr_w1_b {tuple(w1_b.shape)} do not chain")
        if w2 is None and t2 is None and w2_a.shape[1] != w2_b.shape[0]:
            raise LayerError(f"{name} lokr_w2_a {tuple(w2_a.shape)} and lokr_w2_b {tuple(w2_b.shape)} do not chain")
    except (AttributeError, IndexError) as exc:
        raise LayerError(f"{name} has LoKr factors of impossible shapes ({exc})") from None
    return recipe


def _loha(name: str, params: dict) -> Hadamard:
    if "hada_t1" in params or "hada_t2" in params:
        raise LayerError(f"{name} is a Tucker LoHa (hada_t1/hada_t2), which LyCORIS writes for convolutions only")
    w1_a, w1_b, w2_a, w2_b = _need(name, params, "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    if any(t.ndim != 2 for t in (w1_a, w1_b, w2_a, w2_b)):
        raise LayerError(f"{name} is a convolution LoHa (FLUX has linear layers only)")
    if (w1_a.shape[1] != w1_b.shape[0] or w2_a.shape[1] != w2_b.shape[0]
            or (w1_a.shape[0], w1_b.shape[1]) != (w2_a.shape[0], w2_b.shape[1])):
        raise LayerError(f"{name} has LoHa factors of impossible shapes (hada_w1_a {tuple(w1_a.shape)}, hada_w1_b "
                         f"{tuple(w1_b.shape)}, hada_w2_a {tuple(w2_a.shape)}, hada_w2_b {tuple(w2_b.shape)})")
    return Hadamard(w1_a=w1_a, w1_b=w1_b, w2_a=w2_a, w2_b=w2_b, scale=_scale(_alpha(params), w1_b.shape[0]))


def _diff(name: str, params: dict) -> Full:
    return Full(diff=params["diff"])
