"""Prompt diagnostics: say what the text encoders will not see.

Why: FLUX reads the prompt twice, through CLIP (cut at 77 tokens, silently) and through T5 (cut at
``max_sequence_length``). T5-XXL's vocabulary is English-centred: most Chinese characters become its
unknown token, so a Chinese prompt reaches the model mostly through CLIP's 77 tokens. Our users write in
Chinese; they should be told, per image, how much of their prompt was lost and where.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PromptReport:
    clip_tokens: int
    clip_limit: int
    t5_tokens: int
    t5_limit: int
    t5_unknown_fraction: float  # share of the prompt's non-space characters T5 mapped to <unk>
    warnings: list[str] = field(default_factory=list)
    clip_text: str = ""  # the part of the prompt CLIP reads (all of it unless truncated)
    t5_text: str = ""  # the part of the prompt T5 reads


def _ellipsis(text: str, limit: int = 40) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + "…"


def check_prompt(tokenizer_clip, tokenizer_t5, prompt: str, max_sequence_length: int) -> PromptReport:
    """Tokenize as the pipeline will (no truncation) and report what gets cut or lost."""
    warnings: list[str] = []
    clip_limit = int(tokenizer_clip.model_max_length)
    clip = tokenizer_clip(prompt, truncation=False, return_offsets_mapping=True)
    clip_ids, clip_offsets = clip["input_ids"], clip["offset_mapping"]
    clip_text = t5_text = prompt
    if len(clip_ids) > clip_limit:
        cut_at = clip_offsets[clip_limit - 1][0]  # the last slot holds the end token
        clip_text = prompt[:cut_at]
        warnings.append(
            f"CLIP truncated the prompt to {clip_limit} tokens ({len(clip_ids)} needed); it does not see: "
            f"'{_ellipsis(prompt[cut_at:])}'"
        )

    t5 = tokenizer_t5(prompt, truncation=False, return_offsets_mapping=True)
    t5_ids, t5_offsets = t5["input_ids"], t5["offset_mapping"]
    if len(t5_ids) > max_sequence_length:
        cut_at = t5_offsets[max_sequence_length - 1][0]
        t5_text = prompt[:cut_at]
        warnings.append(
            f"T5 truncated the prompt to max_sequence_length={max_sequence_length} tokens ({len(t5_ids)} "
            f"needed); it does not see: '{_ellipsis(prompt[cut_at:])}'"
        )

    unk_id = tokenizer_t5.unk_token_id
    unknown_chars = set()
    for tid, (start, end) in zip(t5_ids, t5_offsets):
        if tid == unk_id:
            unknown_chars.update(i for i in range(start, end) if not prompt[i].isspace())
    visible = sum(1 for ch in prompt if not ch.isspace())
    fraction = len(unknown_chars) / visible if visible else 0.0
    if unknown_chars:
        sample = "".join(prompt[i] for i in sorted(unknown_chars))
        warnings.append(
            f"T5 mapped {fraction:.0%} of the prompt to its unknown token ('{_ellipsis(sample, 20)}'): its "
            "vocabulary is English-centred, so that text reaches FLUX only through CLIP's "
            f"{clip_limit} tokens; add an English description to steer the image"
        )
    return PromptReport(
        clip_tokens=len(clip_ids),
        clip_limit=clip_limit,
        t5_tokens=len(t5_ids),
        t5_limit=max_sequence_length,
        t5_unknown_fraction=fraction,
        warnings=warnings,
        clip_text=clip_text,
        t5_text=t5_text,
    )
