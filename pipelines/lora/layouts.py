"""LoRA files keyed the way kohya, LyCORIS, ComfyUI and OneTrainer key them -> one recipe per model tensor.

Why our own reader: diffusers' FLUX converter knows kohya LoRA (``lora_down``/``lora_up``) only, hard-codes
FLUX.1-dev's widths when it splits ``linear1``, drops ComfyUI's bias deltas (``diff_b``) with a log line,
and reads neither LyCORIS LoKr/LoHa nor OneTrainer's COMFY/LEGACY layouts. Here each file is grouped into
layers (a key = layer name + a suffix from ``lycoris.SUFFIXES``), each layer becomes a recipe with its tool's
math (pipelines/lora/lycoris.py), and its name is placed on diffusers modules (pipelines/lora/bfl_names.py),
split by the loaded model's sizes. Nothing is dropped: a layer that cannot be placed or read is reported by
name (``unplaced`` / ``problems``), and a strict read refuses the file.

Naming families (the prefix decides the component and how the rest of the name is read):

=====================================  ============  =========================================================
prefix                                 component     rest of the name
=====================================  ============  =========================================================
``lora_unet_``                         transformer   BFL name with ``_`` (kohya sd-scripts, lycoris.kohya,
                                                     OneTrainer KOHYA)
``diffusion_model.``                   transformer   BFL name (ComfyUI, OneTrainer COMFY)
``double_blocks.`` ``single_blocks.``  transformer   BFL name, no prefix (OneTrainer ORIGINAL)
``lycoris_``                           transformer   diffusers module with ``_`` (LyCORIS under SimpleTuner)
``lora_transformer_``                  transformer   diffusers module with ``_`` (OneTrainer LEGACY)
``lora_te1_`` ``lora_te_``             text_encoder  CLIP-L module with ``_``
``text_encoders.clip_l.transformer.``  text_encoder  CLIP-L module (ComfyUI, OneTrainer COMFY)
``transformer.`` ``text_encoder.``     both          diffusers naming, with LyCORIS/ComfyUI suffixes
``lora_te2_`` ``text_encoders.t5xxl.`` (refused)     T5: FLUX.1 LoRAs here adapt CLIP-L only
=====================================  ============  =========================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .bfl_names import FluxDims, expected_rows_text, place_bfl, place_clip, place_diffusers
from .deltas import LowRank, Recipe, Target
from .lycoris import LOHA_SUFFIXES, LOKR_SUFFIXES, LayerError, layer_recipes, split_key, unsupported_kind

#: (prefix, component, how the rest is named, format); first match wins, longest prefixes first
_FAMILIES = (
    ("text_encoders.clip_l.transformer.", "text_encoder", "clip", None),
    ("text_encoders.t5xxl.transformer.", "t5", "t5", None),
    ("lora_transformer_", "transformer", "diffusers", "onetrainer-legacy"),
    ("diffusion_model.", "transformer", "bfl", "comfyui"),
    ("lycoris_", "transformer", "diffusers", "lycoris"),
    ("lora_unet_", "transformer", "bfl", "kohya"),
    ("lora_te1_", "text_encoder", "clip", None),
    ("lora_te2_", "t5", "t5", None),
    ("lora_te_", "text_encoder", "clip", None),
    ("double_blocks.", "transformer", "bfl-bare", "bfl"),
    ("single_blocks.", "transformer", "bfl-bare", "bfl"),
    ("transformer.", "transformer", "diffusers", "lycoris"),  # diffusers naming with LyCORIS/ComfyUI suffixes
    ("text_encoder.", "text_encoder", "clip", None),
)
#: diffusers' own prefixes: such a file is ours to read only when its suffixes are LyCORIS/ComfyUI ones
_DIFFUSERS_PREFIXES = ("transformer.", "text_encoder.")
_SD_UNET_WORDS = ("down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block")


def is_foreign_layout(keys) -> bool:
    """True when a file is keyed by one of the families above or holds LyCORIS/ComfyUI suffixes (XLabs files,
    ``double_blocks.N.processor.*``, stay with diffusers' XLabs converter)."""
    keys = list(keys)
    if any(".processor." in k for k in keys):
        return False
    prefixes = tuple(f[0] for f in _FAMILIES if f[0] not in _DIFFUSERS_PREFIXES)
    for key in keys:
        if key.startswith(prefixes):
            return True
        parts = split_key(key)
        if parts and parts[1] in LOKR_SUFFIXES + LOHA_SUFFIXES + ("diff", "diff_b", "lora_down.weight"):
            return True
    return False


@dataclass
class ForeignRead:
    """What :func:`read_foreign` made of a file: recipes per model tensor, and everything it could not use."""

    format: str  # kohya | lycoris | comfyui | onetrainer-legacy | bfl
    tool: str  # the writer family, in words (for inspect and logs)
    recipes: dict[Target, Recipe] = field(default_factory=dict)
    #: layer name in the file -> the diffusers modules it went to (inspect's "placed" map)
    placed: dict[str, tuple[str, ...]] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)  # layers whose names no FLUX module is known by
    problems: list[str] = field(default_factory=list)  # why a strict read refuses the file, besides unplaced
    alphas: dict[str, float] = field(default_factory=dict)  # layer -> stored alpha (kohya-style files)
    kinds: dict[str, int] = field(default_factory=dict)  # LoRA / LoKr / LoHa / full / bias -> layer count

    def refusal(self) -> list[str]:
        """Every reason this file cannot be loaded, in words (empty: it can)."""
        out = list(self.problems)
        if self.unplaced:
            out.append(f"{len(self.unplaced)} layers have names this service does not know a FLUX module for "
                       f"(e.g. {', '.join(self.unplaced[:3])})")
        return out


def _family(layer: str):
    for prefix, component, naming, fmt in _FAMILIES:
        if layer.startswith(prefix):
            rest = layer if naming == "bfl-bare" else layer[len(prefix):]
            return component, ("bfl" if naming == "bfl-bare" else naming), rest, fmt
    return None, None, layer, None


def _tool(fmt: str, kinds: dict, header: dict, keys) -> str:
    """Which tool family wrote the file, in words: from the naming family, refined by the header when the writer
    signs it (OneTrainer's ``ot_*`` keys, sd-scripts' ``ss_network_module``)."""
    lyco = any(k in kinds for k in ("LoKr", "LoHa"))
    onetrainer = any(k.startswith("ot_") for k in header)
    if fmt == "lycoris":
        base = ("LyCORIS with SimpleTuner's names (lycoris_<diffusers module>)"
                if any(k.startswith("lycoris_") for k in keys) else "LyCORIS layers in diffusers naming")
    elif fmt == "kohya":
        base = ("OneTrainer KOHYA output (kohya layout, lora_unet_<BFL layer>)" if onetrainer else
                "LyCORIS through kohya sd-scripts (lycoris.kohya; lora_unet_<BFL layer>)" if lyco else
                "kohya sd-scripts layout (lora_unet_<BFL layer>)")
    elif fmt == "comfyui":
        ab = any(k.endswith(".lora_A.weight") for k in keys)
        base = ("OneTrainer COMFY output (diffusion_model.<BFL layer>, lora_A/lora_B + alpha)" if ab or onetrainer else
                "ComfyUI (Extract and Save Lora: diffusion_model.<BFL layer>, diff / diff_b deltas)")
    elif fmt == "onetrainer-legacy":
        base = "OneTrainer LEGACY output (lora_transformer_<diffusers module>)"
    else:
        base = "OneTrainer ORIGINAL output (BFL names, no prefix)"
    module = header.get("ss_network_module")
    if module and module not in base:
        base += f"; sd-scripts --network_module {module}"
    return base


def _place(component: str, naming: str, rest: str, recipe: Recipe, dims: FluxDims | None):
    """-> (list of (module, start, stop), swap_halves, norm) or None when the name is not known."""
    if naming == "clip":
        module = place_clip(rest)
        return ([(module, 0, None)], False, False) if module else None
    if naming == "bfl":
        shape = tuple(recipe.shape)
        spot = place_bfl(rest, dims, out_rows=shape[0], in_features=shape[1] if len(shape) > 1 else None)
        if spot is None:  # some tools write diffusers names under a BFL prefix
            module = place_diffusers(rest)
            return ([(module, 0, None)], False, ".norm_" in module) if module else None
        norm = "norm" in spot.bfl.rsplit(".", 1)[-1]
        if spot.rows is None and len(spot.modules) > 1:
            raise LayerError(f"changes {shape[0]} rows, which cannot be told apart into {len(spot.modules)} parts "
                             f"({', '.join(spot.modules)}) without the model")
        if spot.rows is None:
            return [(m, 0, None) for m in spot.modules], spot.swap_halves, norm
        if sum(spot.rows) != shape[0]:
            raise LayerError(f"changes {shape[0]} rows; {expected_rows_text(spot.bfl, dims)}, so this file was "
                             "made for a FLUX of another size")
        bounds, start = [], 0
        for module, n in zip(spot.modules, spot.rows):
            bounds.append((module, start, start + n))
            start += n
        return bounds, spot.swap_halves, norm
    module = place_diffusers(rest)
    return ([(module, 0, None)], False, ".norm_" in module) if module else None


def _compact(recipe: Recipe) -> Recipe:
    """A LoRA cut out of a block-diagonal ``lora_up`` (what sd-scripts writes when it fuses q, k, v LoRAs) keeps
    only the rank columns it uses: the same product, the rank of the original part."""
    if not isinstance(recipe, LowRank):
        return recipe
    used = recipe.up.abs().sum(dim=0) != 0
    if bool(used.all()) or not bool(used.any()):
        return recipe
    return LowRank(up=recipe.up[:, used], down=recipe.down[used], scale=recipe.scale)


def read_foreign(raw: dict, header: dict, dims: FluxDims | None) -> ForeignRead:
    """Group, read and place every layer of ``raw``. Never raises for the file's content: what is wrong is
    listed in ``problems``/``unplaced`` (the caller refuses, or ``lora inspect`` reports)."""
    layers: dict[str, dict] = {}
    stray: list[str] = []
    for key, tensor in raw.items():
        parts = split_key(key)
        if parts is None:
            stray.append(key)
        else:
            layers.setdefault(parts[0], {})[parts[1]] = tensor
    formats = [f for f in (_family(name)[3] for name in layers) if f]
    out = ForeignRead(format=max(set(formats), key=formats.count) if formats else "kohya", tool="")
    sd_names = sorted(n for n in layers if any(w in n for w in _SD_UNET_WORDS))
    if sd_names:
        out.problems.append(f"{len(sd_names)} layers have Stable Diffusion UNet block names (e.g. {sd_names[0]}: "
                            "down_blocks/up_blocks/input_blocks...): it was made for a UNet model such as SD 1.5/SDXL, "
                            "not FLUX (FLUX files name double_blocks/single_blocks or transformer_blocks)")
        return out
    if stray:
        kinds = sorted({k for k in map(unsupported_kind, stray) if k})
        out.problems.append(f"{len(stray)} keys are not tensors of a layer kind this service reads"
                            + (f" ({', '.join(kinds)} adapters are not supported)" if kinds else "")
                            + f" (e.g. {', '.join(sorted(stray)[:3])})")
    t5: list[str] = []
    for name, params in sorted(layers.items()):
        component, naming, rest, _ = _family(name)
        if component == "t5":
            t5.append(name)
            continue
        if component is None:
            out.unplaced.append(name)
            continue
        try:
            weight, bias = layer_recipes(name, params)
            if "alpha" in params:
                out.alphas[name] = float(params["alpha"].float().reshape(-1)[0])
            placed = _place(component, naming, rest, weight if weight is not None else bias, dims)
        except LayerError as exc:
            text = str(exc)
            out.problems.append(text if text.startswith(name) or "dora_scale" in text else f"{name} {text}")
            continue
        if placed is None:
            out.unplaced.append(name)
            continue
        bounds, swap, norm = placed
        if norm:
            out.problems.append(f"{name} changes a norm's scale, which this service does not apply (linear layers "
                                "and their biases only)")
            continue
        for label, recipe in (("weight", weight), ("bias", bias)):
            if recipe is None:
                continue
            if swap:
                recipe = recipe.swap_halves()
            kind = "bias" if label == "bias" else recipe.kind
            out.kinds[kind] = out.kinds.get(kind, 0) + 1
            for module, start, stop in bounds:
                part = recipe if stop is None else _compact(recipe.rows(start, stop))
                target = (component, module, label)
                if target in out.recipes:
                    out.problems.append(f"{name} and another layer of the file both change {component}.{module}")
                    continue
                out.recipes[target] = part
        out.placed[name] = tuple(m for m, _, _ in bounds)
    if t5:
        out.problems.append(f"{len(t5)} layers are for a second text encoder (T5, e.g. {t5[0]}); FLUX.1 LoRAs "
                            "here may train CLIP-L only")
    out.tool = _tool(out.format, out.kinds, header, raw.keys())
    return out
