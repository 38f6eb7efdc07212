"""``flux-service lora inspect``: what loading a LoRA file will actually do, before a server is started.

Why here and not in the CLI: the report reads the same :class:`LoraWeights` the engine loads (same path
resolution, same hash, same :meth:`LoraWeights.scale_factors`), so inspect and the results of a generation
cannot disagree on file, hash, rank or effective scale. The model is described from its config files on the
meta device: no weights are read.
"""

from __future__ import annotations

from pipelines.errors import AdapterError, FluxServiceError
from pipelines.lora.files import check_fits, linear_shapes, read_lora
from pipelines.lora.paths import display_path, locate_lora
from pipelines.lora.weights import COMPONENT_LABELS, LoraWeights, module_group

#: safetensors metadata worth showing (kohya sd-scripts ``ss_*``, SAI model spec); the rest is training detail
USEFUL_METADATA = ("ss_output_name", "ss_base_model_version", "ss_network_module", "ss_network_dim",
                   "ss_network_alpha", "ss_num_train_images", "ss_num_epochs", "ss_training_comment",
                   "modelspec.title", "modelspec.architecture", "modelspec.trigger_phrase", "software", "name")


def _alpha_description(lora: LoraWeights) -> object:
    if lora.format == "kohya":
        alphas = sorted({float(v) for v in _kohya_alphas(lora)})
        return alphas[0] if len(alphas) == 1 else (alphas or f"{lora.rank} (= rank; none stored)")
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


def _kohya_alphas(lora: LoraWeights) -> list[float]:
    """The stored kohya alphas, recovered as folded scale x rank (what the converter multiplied in)."""
    ranks = lora.ranks()
    return [round(scale * ranks[key], 6) for key, scale in lora.folded_scales.items() if key in ranks]


def _ranks(lora: LoraWeights) -> object:
    ranks = lora.ranks()
    if len(set(ranks.values())) <= 1:
        return lora.rank
    groups: dict[str, set[int]] = {}
    for key, r in ranks.items():
        groups.setdefault(module_group(key), set()).add(r)
    return {g: (sorted(v) if len(v) > 1 else v.pop()) for g, v in sorted(groups.items())}


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
    lora = read_lora(where.path)
    groups: dict[str, int] = {}
    for key in lora.ranks():
        group = module_group(key)
        groups[group] = groups.get(group, 0) + 1
    cfg = lora.config or lora.text_encoder_config or {}
    report = {
        "file": display_path(lora.path, models_dir=settings.models_dir, demo_root=demo_root),
        "sha256": lora.short_hash,
        "format": lora.format,
        "components": [COMPONENT_LABELS[c] for c in lora.components],
        "rank": _ranks(lora),
        "alpha": _alpha_description(lora),
        "rslora": bool(cfg.get("use_rslora")),
        "dora": lora.is_dora,
        "effective_scale_at_strength_1": lora.scale_summary(),
        "tensors": len(lora.state_dict),
        "layers": len(lora.ranks()),
        "target_modules": groups,
        "dtype": sorted({str(t.dtype).removeprefix("torch.") for t in lora.state_dict.values()}),
        "size_mb": round(lora.size_bytes / 2**20, 2),
        "trigger_words": lora.trigger_words,
        "trigger_words_from": lora.trigger_source or None,
        "metadata": {k: lora.metadata[k][:200] for k in USEFUL_METADATA if lora.metadata.get(k)},
        "notes": lora.notes,
        "warnings": [where.note] if where.note else [],
    }
    try:
        if source is None:
            raise FluxServiceError(problem or "no model")
        check_fits(lora, model_linear_shapes(source))
        report["fits_configured_model"] = True
        report["fit_detail"] = f"every tensor matches a layer of {source.label}"
    except AdapterError as exc:
        report["fits_configured_model"], report["fit_detail"] = False, exc.message
    except FluxServiceError as exc:
        report["fits_configured_model"], report["fit_detail"] = None, f"could not check: {exc.message}"
    return report
