"""FLUX layer names as other tools write them -> the diffusers modules this service loads.

Why: kohya sd-scripts, ComfyUI and OneTrainer name FLUX layers after Black Forest Labs' original model
(``double_blocks.0.img_attn.qkv``, ``single_blocks.3.linear1``, ``final_layer.adaLN_modulation.1``), flattened
with ``_`` in kohya files; LyCORIS under SimpleTuner and OneTrainer's legacy files flatten the diffusers names
(``transformer_blocks_0_attn_add_k_proj``). diffusers' FLUX model splits BFL's fused layers: ``img_attn.qkv``
into ``to_q``/``to_k``/``to_v``, ``single_blocks.N.linear1`` into ``to_q``/``to_k``/``to_v``/``proj_mlp``; and its
final modulation stores (scale, shift) where BFL stores (shift, scale). :func:`place_bfl` says where a BFL
layer goes; the row sizes of a split come from the loaded model (``FluxDims``), never from FLUX.1-dev's
3072/12288, so files for FLUX models of other widths load as well.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: BFL double-block layer -> diffusers modules (several: the rows are split among them, in this order)
_DOUBLE = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "img_attn.proj": ("attn.to_out.0",),
    "txt_attn.proj": ("attn.to_add_out",),
    "img_mlp.0": ("ff.net.0.proj",),
    "img_mlp.2": ("ff.net.2",),
    "txt_mlp.0": ("ff_context.net.0.proj",),
    "txt_mlp.2": ("ff_context.net.2",),
    "img_mod.lin": ("norm1.linear",),
    "txt_mod.lin": ("norm1_context.linear",),
    "img_attn.norm.query_norm": ("attn.norm_q",),
    "img_attn.norm.key_norm": ("attn.norm_k",),
    "txt_attn.norm.query_norm": ("attn.norm_added_q",),
    "txt_attn.norm.key_norm": ("attn.norm_added_k",),
}
_SINGLE = {
    "linear1": ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"),
    "linear2": ("proj_out",),
    "modulation.lin": ("norm.linear",),
    "norm.query_norm": ("attn.norm_q",),
    "norm.key_norm": ("attn.norm_k",),
}
_TOP = {
    "img_in": ("x_embedder",),
    "txt_in": ("context_embedder",),
    "time_in.in_layer": ("time_text_embed.timestep_embedder.linear_1",),
    "time_in.out_layer": ("time_text_embed.timestep_embedder.linear_2",),
    "vector_in.in_layer": ("time_text_embed.text_embedder.linear_1",),
    "vector_in.out_layer": ("time_text_embed.text_embedder.linear_2",),
    "guidance_in.in_layer": ("time_text_embed.guidance_embedder.linear_1",),
    "guidance_in.out_layer": ("time_text_embed.guidance_embedder.linear_2",),
    "final_layer.linear": ("proj_out",),
    "final_layer.adaLN_modulation.1": ("norm_out.linear",),
}
#: BFL layers whose two row halves diffusers stores the other way round
_SWAPPED = {"final_layer.adaLN_modulation.1"}
_BLOCK = re.compile(r"^(?P<kind>double_blocks|single_blocks)[._](?P<i>\d+)[._](?P<rest>.+)$")

#: diffusers FLUX module names below a block / at the top, for names written with ``_`` instead of ``.``
_DIFFUSERS_DOUBLE = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                     "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj",
                     "ff_context.net.2", "norm1.linear", "norm1_context.linear", "attn.norm_q", "attn.norm_k",
                     "attn.norm_added_q", "attn.norm_added_k")
_DIFFUSERS_SINGLE = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp", "proj_out", "norm.linear", "attn.norm_q",
                     "attn.norm_k")
_DIFFUSERS_TOP = ("x_embedder", "context_embedder", "proj_out", "norm_out.linear",
                  "time_text_embed.timestep_embedder.linear_1", "time_text_embed.timestep_embedder.linear_2",
                  "time_text_embed.text_embedder.linear_1", "time_text_embed.text_embedder.linear_2",
                  "time_text_embed.guidance_embedder.linear_1", "time_text_embed.guidance_embedder.linear_2")
_DIFFUSERS_BLOCK = re.compile(r"^(?P<kind>transformer_blocks|single_transformer_blocks)[._](?P<i>\d+)[._](?P<rest>.+)$")
#: CLIP-L text encoder layers (kohya ``lora_te1_text_model_encoder_layers_0_self_attn_q_proj``)
_CLIP = re.compile(r"^(?:text_model[._])?encoder[._]layers[._](?P<i>\d+)[._]"
                   r"(?P<rest>self_attn[._](?:q|k|v|out)_proj|mlp[._]fc[12])$")


def _flat(name: str) -> str:
    return name.replace(".", "_")


def _lookup(table, rest: str):
    """``rest`` in dotted or flattened form -> (table key, value), or None."""
    if rest in table:
        return rest, table[rest]
    flat = _flat(rest)
    for key, value in table.items():
        if _flat(key) == flat:
            return key, value
    return None


@dataclass(frozen=True)
class FluxDims:
    """Row sizes of the split layers, from the loaded model: ``inner`` (attention width), ``mlp`` (hidden width
    of a single block's MLP). None: not known (no model at hand); splits are then inferred from the file."""

    inner: int
    mlp: int

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, int]] | None) -> "FluxDims | None":
        """From :func:`~pipelines.lora.files.linear_shapes` of the transformer: module -> (in, out)."""
        if not shapes:
            return None
        q = next((v for k, v in shapes.items() if k.endswith("attn.to_q")), None)
        mlp = next((v for k, v in shapes.items() if k.endswith(".proj_mlp")), None)
        if q is None:
            return None
        return cls(inner=q[1], mlp=mlp[1] if mlp else 4 * q[1])


@dataclass(frozen=True)
class Placement:
    """Where a BFL layer goes: diffusers modules in row order with their row counts, and whether the rows of
    the file's tensor must have their halves swapped first."""

    bfl: str  # the BFL name, dotted (``double_blocks.0.img_attn.qkv``)
    modules: tuple[str, ...]
    rows: tuple[int, ...] | None  # rows per module; None for a layer that is not split
    swap_halves: bool = False


def place_bfl(name: str, dims: FluxDims | None, out_rows: int | None = None, in_features: int | None = None):
    """A BFL layer name (dotted or kohya-flattened, no prefix) -> :class:`Placement`, or None if unknown.

    ``out_rows``/``in_features``: the file's tensor size, used to infer a split when ``dims`` is None (the
    ``qkv`` thirds; ``linear1`` as three times its input width plus the MLP)."""
    name = name.removesuffix(".scale")
    m = _BLOCK.match(name)
    if m:
        table, prefix = (_DOUBLE, "transformer_blocks") if m["kind"] == "double_blocks" else \
                        (_SINGLE, "single_transformer_blocks")
        found = _lookup(table, m["rest"])
        if found is None:
            return None
        key, targets = found
        bfl = f"{m['kind']}.{m['i']}.{key}"
        modules = tuple(f"{prefix}.{m['i']}.{t}" for t in targets)
    else:
        found = _lookup(_TOP, name)
        if found is None:
            return None
        key, modules = found
        bfl = key
    rows = None
    if len(modules) > 1:
        rows = split_rows(len(modules), dims, out_rows, in_features)
    return Placement(bfl=bfl, modules=modules, rows=rows, swap_halves=key in _SWAPPED)


def split_rows(parts: int, dims: FluxDims | None, out_rows: int | None, in_features: int | None):
    """Row counts of a split layer: q, k, v (3 parts) or q, k, v, mlp (4 parts: a single block's ``linear1``)."""
    if dims is not None:
        return (dims.inner,) * 3 + ((dims.mlp,) if parts == 4 else ())
    if out_rows is None:
        return None
    if parts == 3:
        return (out_rows // 3,) * 3 if out_rows % 3 == 0 else None
    inner = in_features
    if not inner or out_rows <= 3 * inner:
        return None
    return (inner,) * 3 + (out_rows - 3 * inner,)


def expected_rows_text(name: str, dims: FluxDims | None) -> str:
    """How many rows a split layer must have on the loaded model, in words (for refusals)."""
    if dims is None:
        return "the q, k, v (and MLP) parts cannot be told apart"
    parts = ("q", "k", "v", "mlp") if "linear1" in name else ("q", "k", "v")
    rows = split_rows(len(parts), dims, None, None)
    dev = (3072, 3072, 3072, 12288)[:len(parts)]
    return (f"the loaded model splits it into {', '.join(parts)} = {'+'.join(map(str, rows))} = {sum(rows)} rows "
            f"(FLUX.1-dev: {'+'.join(map(str, dev))} = {sum(dev)})")


def place_diffusers(flat: str) -> str | None:
    """A diffusers FLUX transformer module written with ``_`` (``transformer_blocks_0_attn_add_k_proj``) or with
    dots -> its dotted name, or None. The ``_`` is ambiguous in general (``add_k_proj``), so names are matched
    against the FLUX modules diffusers has, not split blindly."""
    m = _DIFFUSERS_BLOCK.match(flat)
    if m:
        table = _DIFFUSERS_DOUBLE if m["kind"] == "transformer_blocks" else _DIFFUSERS_SINGLE
        rest = next((t for t in table if _flat(t) == _flat(m["rest"])), None)
        return f"{m['kind']}.{m['i']}.{rest}" if rest else None
    return next((t for t in _DIFFUSERS_TOP if _flat(t) == _flat(flat)), None)


def place_clip(flat: str) -> str | None:
    """A CLIP-L layer as kohya/ComfyUI/OneTrainer write it -> the module name in ``pipe.text_encoder``
    (transformers 5: no ``text_model.`` level), or None."""
    m = _CLIP.match(flat)
    if not m:
        return None
    rest = m["rest"].replace("_", ".")
    rest = rest.replace("self.attn", "self_attn").replace("q.proj", "q_proj").replace("k.proj", "k_proj")
    rest = rest.replace("v.proj", "v_proj").replace("out.proj", "out_proj")
    return f"encoder.layers.{m['i']}.{rest}"
