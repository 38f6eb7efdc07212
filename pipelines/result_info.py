"""What every result says about itself: the ``GenerationInfo`` record of one image.

Why apart from the engine: the record is long (model, adapters with provenance, prompt stage, encoder
diagnostics, timings) and is read by every front end (headers, job JSON, PNG chunk, page, CLI), while the
engine's job is to run the pipeline. The engine calls these two functions once per image.
"""

from __future__ import annotations

from pipelines.types import GenerationInfo


def step_timings(started: float, marks: list[float], ended: float) -> dict[str, float]:
    """Total, mean step, text encoding and VAE decode seconds, from the step-end clock marks."""
    timings = {"total_s": round(ended - started, 4)}
    if marks:
        step_mean = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - started
        timings.update(step_mean_s=round(step_mean, 4), decode_s=round(ended - marks[-1], 4),
                       encode_s=round(max(marks[0] - started - step_mean, 0.0), 4))
    return timings


def result_info(engine, plan, report, *, warnings: list[str], timings: dict, unknown_before: float,
                eager_size: bool = False) -> GenerationInfo:
    """The record of one image made by ``engine`` from ``plan`` (``report``: the prompt check of what was sent;
    ``eager_size``: a compiled engine ran this size eagerly, it was not warmed up)."""
    return GenerationInfo(
        task=plan.task,
        adapter_name=plan.adapter.name if plan.adapter else None,
        adapter_file=plan.adapter.label if plan.adapter else None,
        lora_scale=plan.lora_scale,
        seed=plan.seed,
        width=plan.width,
        height=plan.height,
        num_inference_steps=plan.num_inference_steps,
        guidance_scale=plan.guidance_scale,
        prompt=plan.prompt,
        model=engine.source.label,
        model_type=engine.source.model_type,
        demo=engine.is_demo,
        device=engine.device,
        dtype=str(engine.dtype).removeprefix("torch."),
        warnings=warnings,
        timings=timings,
        adapter_hash=plan.adapter.short_hash if plan.adapter else None,
        adapter_rank=plan.adapter.rank if plan.adapter else None,
        adapter_scales=dict(plan.adapter.scales) if plan.adapter else None,
        loras=[x.to_dict() for x in plan.loras],
        adapter_strategy=engine.adapter_strategy,
        compiled=engine.compiled and not eager_size,
        eager_size=eager_size,
        compilations=engine.compilations.total,
        translate=plan.staged.mode,
        prompt_original=plan.staged.original,
        prompt_english=plan.staged.english,
        glossary_terms=[list(t) for t in plan.staged.glossary_terms],
        translated=[list(t) for t in plan.staged.translated],
        translator=plan.staged.translator,
        prompt_words=[list(w) for w in plan.staged.words],
        dictionary=plan.staged.dictionary,
        prompt_clip=report.clip_text,
        prompt_t5=report.t5_text,
        t5_unknown_before=round(unknown_before, 4),
        t5_unknown_after=round(report.t5_unknown_fraction, 4),
    )
