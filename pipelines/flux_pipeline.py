"""``FluxPipeline``: the path-level Python API (a model folder and a LoRA file per call).

    from pipelines.flux_pipeline import FluxPipeline
    pipe = FluxPipeline(model_path="models/flux1-dev", model_type="flux1")
    image = pipe.generate(prompt="科普主持人，专业形象，微笑",
                          lora_path="models/lora/host_person/pytorch_lora_weights.safetensors",
                          lora_alpha=0.7, width=1024, height=1024)

A LoRA file is read the first time it is named and stays resident; naming it again switches to it without
re-reading. With no weights at ``models/flux1-dev`` (the default path) and no FLUX_MODEL_PATH, the embedded
demo model serves, loudly labelled. Details of each call are in ``pipe.last_result.info``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.engine import FluxEngine
from pipelines.settings import ModelType, Settings, load_settings
from pipelines.types import GenerationRequest, GenerationResult, ProgressCallback

if TYPE_CHECKING:
    from PIL.Image import Image


class FluxPipeline:
    def __init__(self, model_path: str | Path = "models/flux1-dev", model_type: ModelType = "flux1", *,
                 device: str | None = None, dtype: str | None = None, settings: Settings | None = None) -> None:
        base = settings or load_settings()
        updates: dict = {"model_type": model_type}
        if device is not None:
            updates["device"] = device
        if dtype is not None:
            updates["dtype"] = dtype
        self.settings = base.model_copy(update=updates)
        self.engine = FluxEngine.from_settings(self.settings, model_path=model_path, with_tasks=False,
                                               default_path_means_demo=True)
        self.last_result: GenerationResult | None = None

    @property
    def is_demo(self) -> bool:
        return self.engine.is_demo

    def generate_result(self, prompt: str, lora_path: str | Path | None = None, lora_alpha: float | None = None,
                        width: int = 1024, height: int = 1024, num_inference_steps: int | None = None,
                        guidance_scale: float | None = None, seed: int | None = None,
                        translate: str | None = None,
                        progress: ProgressCallback | None = None) -> GenerationResult:
        """``translate``: "auto" (default: glossary, then the translation model or the dictionary), "glossary" or "off" (as typed)."""
        req = GenerationRequest(prompt=prompt, lora_path=str(lora_path) if lora_path is not None else None,
                                lora_alpha=lora_alpha, width=width, height=height,
                                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                                translate=translate)
        self.last_result = self.engine.generate(req, progress=progress)
        return self.last_result

    def generate(self, prompt: str, lora_path: str | Path | None = None, lora_alpha: float | None = None,
                 width: int = 1024, height: int = 1024, **kwargs) -> "Image":
        """One image; ``lora_alpha`` defaults to 1.0 when a ``lora_path`` is given."""
        return self.generate_result(prompt, lora_path, lora_alpha, width, height, **kwargs).image
