"""``plan``: a request with every default filled in and every limit checked, before any tensor is touched.

Why apart from ``generate`` (diffusers' ``check_inputs`` idea): validation is cheap and must run where there
is no model at all (a Ray ingress plans with the real task table and LoRA files but no weights), and every
refusal must come before the GPU is busy. ``FluxEngine`` inherits ``RequestPlanner``; ``plan`` reads the
engine's settings, task table, resident LoRAs (``self.loras``) and prompt stage.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, replace

from pipelines.errors import InvalidRequest
from pipelines.lora.registry import ActiveLora, plan_loras
from pipelines.lora.residency import ResidentAdapter
from pipelines.prompt.stage import TRANSLATE_MODES, StagedPrompt
from pipelines.tasks import MAX_LORA_ALPHA, MIN_LORA_ALPHA
from pipelines.types import GenerationRequest

MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Plan:
    """A request with every default filled in and every limit checked: what ``generate`` will do."""

    prompt: str
    task: str | None
    adapter: ResidentAdapter | None
    lora_scale: float
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    notes: tuple[str, ...] = ()
    #: every LoRA of this generation (the task's, the request's ``loras``), in order; ``adapter`` is the first
    loras: tuple[ActiveLora, ...] = ()
    #: the prompt stage's record (glossary, translation); ``prompt`` is its English with the task's template
    staged: StagedPrompt | None = None
    prompt_as_typed: str = ""  # what ``prompt`` would be with translate=off (for the before/after T5 share)


class RequestPlanner:
    """The ``plan`` step of ``FluxEngine`` (mixed in)."""

    def plan(self, req: GenerationRequest) -> Plan:
        """Validate and fill defaults; cheap, touches no tensor (diffusers' ``check_inputs`` idea)."""
        s = self.settings
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise InvalidRequest("`prompt` must be a non-empty string", param="prompt")
        if len(req.prompt) > s.max_prompt_chars:
            raise InvalidRequest(f"`prompt` is {len(req.prompt)} characters; the limit is {s.max_prompt_chars}",
                                 param="prompt")
        task = self.tasks.get(req.task) if req.task is not None else None
        notes: list[str] = []
        base: list[tuple[str, ResidentAdapter, float]] = []
        if req.lora_path is not None:
            if task is not None and task.lora:
                raise InvalidRequest(f"task {task.name!r} already has a LoRA; pass either `task` or `lora_path`",
                                     param="lora_path")
            located, note = self.locate_lora(req.lora_path)
            if note:
                notes.append(note)
            adapter = self.loras.adapter_for(located)
            base.append((adapter.name, adapter, 1.0))
        elif task is not None:
            base.extend((n, self.loras.named[n], s) for n, s in task.loras)
        if req.lora_alpha is not None:
            if not base:
                with_lora = [t for t, c in self.tasks.tasks.items() if c.lora]
                where = f"task {task.name!r} uses no LoRA" if task else "no LoRA is in play (no task given)"
                raise InvalidRequest(f"`lora_alpha` was given but {where}, so it would have no effect; drop it, "
                                     f"or pick a task with a LoRA ({', '.join(with_lora) or 'none configured'})",
                                     param="lora_alpha")
            if not MIN_LORA_ALPHA <= req.lora_alpha <= MAX_LORA_ALPHA:
                raise InvalidRequest(f"`lora_alpha` must be between {MIN_LORA_ALPHA} and {MAX_LORA_ALPHA}, "
                                     f"got {req.lora_alpha}", param="lora_alpha")
        loras = plan_loras(registry=self.loras.named, base=base, task_name=task.name if task else None,
                           lora_alpha=req.lora_alpha, requested=getattr(req, "loras", None))
        loras = tuple(replace(x, adapter=self.loras.resident_again(x.adapter)) for x in loras)
        notes.extend(self.loras.notes[x.name] for x in loras if x.name in self.loras.notes)
        notes.extend(w for x in loras for w in x.adapter.warnings)
        adapter = loras[0].adapter if loras else None
        scale = loras[0].scale if loras else 0.0
        width = req.width if req.width is not None else (task.width if task else 1024)
        height = req.height if req.height is not None else (task.height if task else 1024)
        for name, value in (("width", width), ("height", height)):
            if value % 16:
                raise InvalidRequest(f"`{name}` must be a multiple of 16, got {value}", param=name)
            if not s.min_size <= value <= s.max_size:
                raise InvalidRequest(f"`{name}` must be between {s.min_size} and {s.max_size}, got {value}",
                                     param=name)
        steps = req.num_inference_steps
        if steps is None:  # not `or`: 0 steps is an error to report, not a request for the default
            steps = (task.num_inference_steps if task else None) or self.default_steps
        if not 1 <= steps <= s.max_steps:
            raise InvalidRequest(f"`num_inference_steps` must be between 1 and {s.max_steps}, got {steps}",
                                 param="num_inference_steps")
        guidance = req.guidance_scale
        if guidance is None:
            guidance = task.guidance_scale if task and task.guidance_scale is not None else self.default_guidance
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InvalidRequest(f"`guidance_scale` must be between 0 and {MAX_GUIDANCE}, got {guidance}",
                                 param="guidance_scale")
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        if not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"`seed` must be between 0 and {MAX_SEED}, got {seed}", param="seed")
        mode = req.translate if req.translate is not None else s.translate
        if mode not in TRANSLATE_MODES:
            raise InvalidRequest(f"`translate` must be one of {', '.join(TRANSLATE_MODES)}, got {mode!r}",
                                 param="translate")
        # the prompt stage runs first; trigger words and the template are added to its English, untranslated
        staged = self.prompt_stage.apply(req.prompt, mode)
        prompt = task.render_prompt(staged.english) if task else staged.english
        as_typed = task.render_prompt(req.prompt) if task else req.prompt
        return Plan(prompt=prompt, task=task.name if task else None, adapter=adapter, lora_scale=scale if adapter else 0.0,
                    width=width, height=height, num_inference_steps=steps, guidance_scale=float(guidance),
                    seed=seed, notes=tuple(notes) + staged.notes, staged=staged, prompt_as_typed=as_typed,
                    loras=loras)
