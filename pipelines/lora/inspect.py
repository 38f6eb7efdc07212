"""``flux-service lora inspect``: what loading a LoRA file will actually do, before a server is started.

Why here and not in the CLI: the report reads the same :class:`LoraWeights` the engine loads (same path
resolution, same hash, same :meth:`LoraWeights.scale_factors`), so inspect and the results of a generation
cannot disagree on file, hash, rank or effective scale. The model is described from its config files on the
meta device: no weights are read.
"""

from __future__ import annotations

from pipelines.errors import AdapterError, AdapterMismatch, FluxServiceError
from pipelines.lora.bfl_names import FluxDims
from pipelines.lora.files import check_fits, linear_shapes, read_lora
from pipelines.lora.paths import display_path, locate_lora
from pipelines.lora.weights import COMPONENT_LABELS, LoraWeights, module_group

#: safetensors metadata worth showing (kohya sd-scripts ``ss_*``, SAI model spec); the rest is training detail
USEFUL_METADATA = ("ss_output_name", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                   "ss_network_alpha", "ss_num_train_images", "ss_num_epochs", "ss_training_comment",
                   "modelspec.title", "modelspec.architecture", "modelspec.trigger_phrase", "software", "name")


def _alpha_description(lora: LoraWeights) -> object:
    if lora.stored_alphas:  # kohya-style files: the .alpha tensors as stored
        alphas = sorted({round(float(v), 6) for v in lora.stored_alphas.values()})
        return alphas[0] if len(alphas) == 1 else alphas
    if lora.tool:
        return "none stored (scale 1)"
    cfgs = [c for c in (lora.config, lora.text_encoder_config) if c]
    if cfgs:
        cfg = cfgs[0]
        if cfg.get("alpha_pattern"):
            return {"default": float(cfg["lora_alpha"]), **{k: float(v) for k, v in cfg["alpha_pattern"].items()}}
        return float(cfg["lora_alpha"]) if "lora_alpha" in cfg else f"{lora.rank} (= rank; none stored)"
    if lora.network_alphas:
        values = sorted({float(v) for v in lora.network_alphas.values()})
        return values[0] if len(values) == 1 else values
    return f"{lora.rank} (= rank; none stored)"


def _ranks(lora: LoraWeights) -> object:
    ranks = lora.ranks()
    if not ranks and lora.extra:
        return "none (no low-rank factors)"
    if len(set(ranks.values())) <= 1:
        return lora.rank
    groups: dict[str, set[int]] = {}
    for key, r in ranks.items():
        groups.setdefault(module_group(key), set()).add(r)
    return {g: (sorted(v) if len(v) > 1 else v.pop()) for g, v in sorted(groups.items())}


def _factors(lora: LoraWeights) -> dict[str, str]:
    """LoKr/LoHa factor shapes per module group (``w1 4x4 (x) w2 8x8 low-rank r2``), when the file has any."""
    out: dict[str, set[str]] = {}
    for (component, module, param), recipe in lora.extra.items():
        if param != "weight" or recipe.kind not in ("LoKr", "LoHa"):
            continue
        d = recipe.describe()
        text = (f"LoKr w1 {d['w1']} (x) w2 {d['w2']}" if recipe.kind == "LoKr" else f"LoHa rank {d['rank']}")
        if d.get("cut"):
            text += ", cut from a fused BFL layer"
        out.setdefault(module_group(f"{component}.{module}"), set()).add(text)
    return {g: "; ".join(sorted(v)) for g, v in sorted(out.items())}


def _dtypes(lora: LoraWeights) -> list[str]:
    tensors = list(lora.state_dict.values())
    for recipe in lora.extra.values():
        tensors += [v for v in vars(recipe).values() if hasattr(v, "dtype")]
    return sorted({str(t.dtype).removeprefix("torch.") for t in tensors})


def model_linear_shapes(source) -> dict:
    """Linear layer shapes of the model's transformer and CLIP text encoder, built on the meta device."""
    import torch
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = FluxTransformer2DModel.load_config(str(source.path / "transformer"))
    with torch.device("meta"):
        transformer = FluxTransformer2DModel.from_config(config)
        text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(str(source.path / "text_encoder")))
    return {"transformer": linear_shapes(transformer), "text_encoder": linear_shapes(text_encoder)}


def inspect_lora(path: str, settings) -> dict:
    """The report ``lora inspect`` prints (also as JSON). Raises AdapterError when the file cannot be read."""
    from pipelines.model_source import resolve_model_source

    try:
        source, problem = resolve_model_source(settings), None
    except FluxServiceError as exc:  # no model: the file can still be described
        source, problem = None, exc.message
    demo_root = source.path.parent if source is not None and source.demo else None
    where = locate_lora(path, models_dir=settings.models_dir, demo_root=demo_root)
    shapes, shapes_problem = None, problem
    if source is not None:
        try:
            shapes = model_linear_shapes(source)
        except (OSError, ValueError) as exc:  # a model folder whose config cannot be read
            shapes_problem = f"{type(exc).__name__}: {exc}"
    lora = read_lora(where.path, dims=FluxDims.from_shapes(shapes["transformer"]) if shapes else None, strict=False)
    groups: dict[str, int] = {}
    changed = [f"{c}.{m}" for c in lora.components for m in lora.modules_of(c)]
    for key in changed:
        group = module_group(key)
        groups[group] = groups.get(group, 0) + 1
    cfg = lora.config or lora.text_encoder_config or {}
    report = {
        "file": display_path(lora.path, models_dir=settings.models_dir, demo_root=demo_root),
        "sha256": lora.short_hash,
        "format": lora.format,
        "tool": lora.tool or None,
        "kinds": dict(lora.kinds) or {"DoRA" if lora.is_dora else "LoRA": len(lora.ranks())},
        "components": [COMPONENT_LABELS[c] for c in lora.components],
        "rank": _ranks(lora),
        "factors": _factors(lora),
        "alpha": _alpha_description(lora),
        "rslora": bool(cfg.get("use_rslora")),
        "dora": lora.is_dora,
        "effective_scale_at_strength_1": lora.scale_summary(),
        "tensors": len(lora.state_dict) + len(lora.extra),
        "layers": len(changed),
        "target_modules": groups,
        "unplaced": lora.unplaced,
        "dtype": _dtypes(lora),
        "size_mb": round(lora.size_bytes / 2**20, 2),
        "trigger_words": lora.trigger_words,
        "trigger_words_from": lora.trigger_source or None,
        "metadata": {k: lora.metadata[k][:200] for k in USEFUL_METADATA if lora.metadata.get(k)},
        "notes": lora.notes,
        "warnings": ([where.note] if where.note else []) + lora.warnings,
    }
    try:
        if lora.unloadable:
            raise AdapterMismatch(f"LoRA {lora.path}: " + "; ".join(lora.unloadable), path=str(lora.path))
        if shapes is None:
            raise FluxServiceError(shapes_problem or "no model")
        check_fits(lora, shapes)
        report["fits_configured_model"] = True
        report["fit_detail"] = f"every tensor matches a layer of {source.label}"
    except AdapterError as exc:
        report["fits_configured_model"], report["fit_detail"] = False, exc.message
    except FluxServiceError as exc:
        report["fits_configured_model"], report["fit_detail"] = None, f"could not check: {exc.message}"
    return report
