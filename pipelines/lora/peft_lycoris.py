"""LyCORIS LoKr / LoHa recipes in PEFT's own LoKr / LoHa layers (the ``FLUX_ADAPTERS=peft`` strategy).

Why PEFT's layers and not ours: the peft strategy's promise is "what PEFT computes". PEFT has LoKr and LoHa
layers with the math LyCORIS defined (pipelines/lora/deltas.py: ``Kronecker``, ``Hadamard``), but it builds
their factor shapes itself, from one ``decompose_factor`` for the whole adapter and a rank per layer, and
scales every layer by ``alpha / r``. So a file loads here only when one such configuration reproduces every
layer's factor shapes; otherwise :class:`NotForPeft` says why, and the fused default (which applies any
recipe exactly) is the way to use it. The per-layer rank and alpha travel in ``rank_pattern`` /
``alpha_pattern``, so ``scaling`` is the recipe's scale.
"""

from __future__ import annotations

import re

from .deltas import Hadamard, Kronecker, Recipe

_LOKR = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b")
_LOHA = ("w1_a", "w1_b", "w2_a", "w2_b")
WAY_OUT = "use the default FLUX_ADAPTERS=fused, which applies it exactly"


def peft_refusal(lora) -> str | None:
    """Why the peft strategy cannot hold ``lora`` (a :class:`~pipelines.lora.weights.LoraWeights`) in PEFT's
    layers, or None when it can: LoRA/DoRA/bias in PEFT's LoRA layers, LoKr/LoHa in PEFT's own, one kind each."""
    if not lora.extra:
        return None
    kinds = sorted({r.kind for r in lora.extra.values()})
    if any(p == "weight" and r.kind == "full" for (_, _, p), r in lora.extra.items()):
        return ("it holds full weight differences (ComfyUI's diff), and PEFT has no layer that adds a full "
                "weight difference")
    if any(p == "bias" for _, _, p in lora.extra):
        others = "/".join(k for k in kinds if k != "full")
        return f"it changes biases beside {others} layers; a PEFT adapter has one kind of layer"
    if any(c != "transformer" for c, _, _ in lora.extra):
        return "its LoKr/LoHa layers adapt the CLIP text encoder; LyCORIS layers load into the transformer only here"
    if lora.state_dict:
        return f"it mixes LoRA and {'/'.join(kinds)} layers; a PEFT adapter has one kind of layer"
    try:
        peft_config({m: r for (_, m, _), r in lora.extra.items()})
    except NotForPeft as exc:
        return str(exc)
    return None


class NotForPeft(ValueError):
    """PEFT's LoKr/LoHa layers cannot hold this file as it is; the message says why."""


def _kind(recipes: dict) -> type:
    kinds = {type(r) for r in recipes.values()}
    if kinds == {Kronecker} or kinds == {Hadamard}:
        return kinds.pop()
    names = sorted({r.kind for r in recipes.values()})
    if names in (["LoKr"], ["LoHa"]):  # a Kronecker layer cut off its block edges, or stacked
        raise NotForPeft("some LoKr layers are cut across their Kronecker blocks (a BFL/kohya layer such as a fused "
                         "qkv or linear1 split into diffusers' q, k, v, mlp), which PEFT's LoKr layers cannot hold")
    raise NotForPeft(f"it mixes {', '.join(names)} changes; a PEFT adapter has one kind of layer")


def _peft_shapes(kind: type, recipe: Recipe, r: int, factor: int, decompose_both: bool, layer_shape):
    """The factor shapes PEFT creates for one layer (its own rules, from peft.tuners.lokr.layer)."""
    out_dim, in_dim = layer_shape
    if kind is Hadamard:
        return {"w1_a": (out_dim, r), "w1_b": (r, in_dim), "w2_a": (out_dim, r), "w2_b": (r, in_dim)}
    from peft.tuners.lokr.layer import factorization

    (a, b), (c, d) = factorization(out_dim, factor), factorization(in_dim, factor)
    shapes = {}
    if decompose_both and r < max(a, c) / 2:
        shapes.update(w1_a=(a, r), w1_b=(r, c))
    else:
        shapes["w1"] = (a, c)
    if r < max(b, d) / 2:
        shapes.update(w2_a=(b, r), w2_b=(r, d))
    else:
        shapes["w2"] = (b, d)
    return shapes


def _file_shapes(recipe: Recipe, names) -> dict:
    return {n: tuple(getattr(recipe, n).shape) for n in names if getattr(recipe, n) is not None}


def _rank_for(recipe: Recipe) -> int:
    if isinstance(recipe, Hadamard):
        return recipe.rank
    if recipe.rank is not None:
        return recipe.rank
    (a, c), (b, d) = recipe.factor_shapes()  # both factors full: any rank that makes PEFT keep them full
    return max(a, b, c, d)


def peft_config(recipes: dict[str, Recipe]):
    """``module -> recipe`` (one adapter's transformer layers) -> the LoKrConfig/LoHaConfig that reproduces
    every layer's shapes and scale. Raises :class:`NotForPeft` naming the first layer it cannot."""
    kind = _kind(recipes)
    if kind is Kronecker and any(r.t2 is not None for r in recipes.values()):
        raise NotForPeft("some LoKr layers carry a Tucker core (lokr_t2), which PEFT's LoKr keeps for convolutions")
    names = _LOKR if kind is Kronecker else _LOHA
    ranks = {m: _rank_for(r) for m, r in recipes.items()}
    candidates = [-1]
    if kind is Kronecker:
        decompose_both = any(r.w1 is None for r in recipes.values())
        for r in recipes.values():
            candidates += [d for d in r.factor_shapes()[0] if d not in candidates]
    else:
        decompose_both = False
    first_mismatch = None
    for factor in candidates:
        bad = [m for m, r in recipes.items()
               if _peft_shapes(kind, r, ranks[m], factor, decompose_both, r.shape) != _file_shapes(r, names)]
        if not bad:
            break
        first_mismatch = first_mismatch or (bad[0], factor)
    else:
        module, factor = first_mismatch
        recipe = recipes[module]
        want = _peft_shapes(kind, recipe, ranks[module], factor, decompose_both, recipe.shape)
        raise NotForPeft(f"PEFT's {recipe.kind} layer for {module} would have factors {want}, the file has "
                         f"{_file_shapes(recipe, names)} (no single decompose_factor reproduces every layer)")
    from peft import LoHaConfig, LoKrConfig

    pattern = {re.escape(m): r for m, r in ranks.items()}
    alphas = {re.escape(m): recipes[m].scale * ranks[m] for m in recipes}
    common = dict(r=next(iter(ranks.values())), alpha=next(iter(alphas.values())), target_modules=sorted(recipes),
                  rank_pattern=pattern, alpha_pattern=alphas, init_weights=False)
    if kind is Kronecker:
        return LoKrConfig(decompose_both=decompose_both, decompose_factor=factor, **common)
    return LoHaConfig(**common)


def adapter_layer(module, name: str, attr: str):
    """The PEFT layer holding ``name``'s ``attr`` along a chain of wrappers (LoRA around LoKr around ...)."""
    layer = module
    while layer is not None:
        store = getattr(layer, attr, None)
        if store is not None and hasattr(store, "keys") and name in store:
            return layer
        layer = getattr(layer, "base_layer", None)
    return None


def load_into_peft(model, name: str, recipes: dict[str, Recipe]) -> None:
    """Add adapter ``name`` to ``model`` (a diffusers transformer) with PEFT's LoKr/LoHa layers holding exactly
    ``recipes``' factors, and check that each layer now computes the recipe (factors and ``scaling``)."""
    import torch

    config = peft_config(recipes)
    model.add_adapter(config, adapter_name=name)
    prefix = "lokr_" if isinstance(next(iter(recipes.values())), Kronecker) else "hada_"
    parts = _LOKR if prefix == "lokr_" else _LOHA
    with torch.no_grad():
        for module_name, recipe in recipes.items():
            module = model.get_submodule(module_name)
            present = [p for p in parts if getattr(recipe, p) is not None]
            layer = None
            for part in present:
                layer = adapter_layer(module, name, prefix + part)
                if layer is None:
                    raise NotForPeft(f"PEFT made no {prefix + part} for {module_name}")
                store = getattr(layer, prefix + part)[name]
                store.copy_(getattr(recipe, part).to(store.dtype))
            if layer is None or abs(layer.scaling[name] - recipe.scale) > 1e-6 * max(1.0, abs(recipe.scale)):
                raise NotForPeft(f"PEFT's layer for {module_name} scales by "
                                 f"{None if layer is None else layer.scaling[name]}, the file by {recipe.scale}")
