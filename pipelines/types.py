"""What goes into a generation and what comes out: small dataclasses shared by every caller.

Why dataclasses and not dicts: the HTTP headers, the CLI output, the log line and the users' scripts all
read the same fields, and a typo in a field name should fail at once, not produce a silent ``None``.
Field names follow diffusers' vocabulary (``num_inference_steps``, ``guidance_scale``, ``lora_scale``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # PIL is imported lazily at run time
    from PIL.Image import Image

#: Called as ``progress(step, total)`` after every denoising step (and once with ``step=0`` before the
#: first). It may raise ``Cancelled`` or ``DeadlineExceeded`` to stop the generation at that step.
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class GenerationRequest:
    """One image to make. ``None`` means "the task's default, else the model type's default"."""

    prompt: str
    task: str | None = None  # None: the base model, no LoRA
    lora_alpha: float | None = None  # the LoRA strength (diffusers: lora_scale); None: the task default
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    seed: int | None = None  # None: a random seed, always reported
    #: Python API only (``FluxPipeline.generate(lora_path=...)``); the HTTP app never sets it.
    lora_path: str | None = None
    #: strengths of registered LoRAs by name, ((name, scale), ...): the task's get a new strength, others are
    #: added (several LoRAs at once); names only, never paths. None: the task's LoRAs as configured.
    loras: tuple[tuple[str, float], ...] | None = None
    #: the prompt stage (pipelines/prompt/stage.py): "auto", "glossary" or "off"; None: the FLUX_TRANSLATE default
    translate: str | None = None


@dataclass
class GenerationInfo:
    """Everything that decided the pixels, plus what went wrong quietly elsewhere (``warnings``)."""

    task: str | None
    adapter_name: str | None  # None: no LoRA was active
    adapter_file: str | None
    lora_scale: float  # 0.0 when no LoRA was active
    seed: int
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    prompt: str  # the prompt as sent to the model (after the task's template / trigger words)
    model: str  # model folder, or "demo"
    model_type: str
    demo: bool
    device: str
    dtype: str
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: encode, denoise, decode, total
    # Which LoRA file made the picture (A1111's "Lora hashes" idea): ``adapter_file`` is its path relative to
    # the models folder (``demo:...`` for the demo's own LoRA); ``adapter_hash`` the first 12 hex digits of
    # its sha256, the same as ``flux-service lora inspect`` prints.
    adapter_hash: str | None = None
    adapter_rank: int | None = None
    #: effective scale per module group at strength 1.0 (alpha/r, alpha/sqrt(r) with rsLoRA, patterns,
    #: kohya alphas); the applied one is this times ``lora_scale``. ``{"all": x}`` when uniform.
    adapter_scales: dict[str, float] | None = None
    #: every LoRA of this image: [{"name", "adapter", "file", "sha256", "scale"}]; adapter_* above is the first
    loras: list[dict] = field(default_factory=list)
    adapter_strategy: str = ""  # fused | peft: how the LoRAs reached the weights
    compiled: bool = False  # the transformer ran under torch.compile
    #: the engine is compiled but this size was not warmed up: it ran eagerly (pipelines/compile.py's policy)
    eager_size: bool = False
    compilations: int = 0  # graphs compiled by this engine so far (grows per new image size, never per LoRA)
    # the prompt stage (pipelines/prompt/stage.py): what the user typed and what each text encoder read
    translate: str = "off"  # the mode used: auto, glossary or off
    prompt_original: str = ""  # as typed
    prompt_english: str = ""  # after glossary + translation, before the task's trigger words and template
    glossary_terms: list[list[str]] = field(default_factory=list)  # [term, English] as applied, in order
    translated: list[list[str]] = field(default_factory=list)  # [text, English] per run the translator handled
    translator: str | None = None  # which translation model produced ``translated``; None: none was used
    #: [source, English, stage] per word or run the stage replaced; stage: glossary, dictionary or model;
    #: English "" for a word the dictionary dropped (的, 了 ...)
    prompt_words: list[list[str]] = field(default_factory=list)
    dictionary: str | None = None  # the dictionary (jieba + CC-CEDICT, its versions and licence) if it was used
    prompt_clip: str = ""  # the text CLIP reads (``prompt`` cut where its 77-token limit cuts)
    prompt_t5: str = ""  # the text T5 reads (``prompt`` cut at max_sequence_length tokens)
    t5_unknown_before: float = 0.0  # share of the prompt T5 maps to <unk> if sent as typed (translate=off)
    t5_unknown_after: float = 0.0  # ... and as actually sent

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, sort_keys=True)


@dataclass
class GenerationResult:
    image: "Image"
    info: GenerationInfo

    def png_bytes(self) -> bytes:
        """PNG with the generation parameters embedded as a text chunk (like other FLUX front ends do)."""
        import io

        from PIL.PngImagePlugin import PngInfo

        meta = PngInfo()
        meta.add_itxt("flux-service", self.info.to_json())
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", pnginfo=meta)
        return buf.getvalue()


@dataclass(frozen=True)
class TaskInfo:
    """One row of the task table as clients see it (no absolute paths leak out)."""

    name: str
    description: str
    adapter_name: str | None
    adapter_file: str | None
    lora_alpha: float
    trigger_words: list[str]
    prompt_template: str
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    adapter_hash: str | None = None  # sha256 of the LoRA file, first 12 hex digits
    lora_trigger_words: list[str] = field(default_factory=list)  # what the LoRA file ships with
    warnings: list[str] = field(default_factory=list)  # e.g. the demo's own LoRA standing in for yours
    loras: list[dict] = field(default_factory=list)  # [{"name", "scale"}]: every LoRA of the task

    def to_dict(self) -> dict:
        return asdict(self)
