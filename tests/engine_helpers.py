"""Small helpers shared by the engine tests (tests/test_engine_*.py): pixels, requests, bare diffusers calls."""

from __future__ import annotations

import numpy as np

from pipelines.types import GenerationRequest
from tests.conftest import SMALL

PROMPT = "a portrait photo of a science host"
SEED = 1234


def pixels(image_or_result) -> np.ndarray:
    image = getattr(image_or_result, "image", image_or_result)
    return np.asarray(image).copy()


def request(**overrides) -> GenerationRequest:
    """A small, seeded request (64x64, 2 steps); keyword arguments override any field."""
    fields = dict(prompt=PROMPT, seed=SEED, **SMALL)
    fields.update(overrides)
    return GenerationRequest(**fields)


def fresh_bare_pipe(engine):
    """A new plain ``diffusers.FluxPipeline`` on the demo weights (for tests that attach adapters to it)."""
    import torch
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(engine.source.path), torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_call(pipe, *, prompt: str = PROMPT, seed: int = SEED, guidance_scale: float = 3.5, **size) -> np.ndarray:
    """What a user of plain diffusers would run, with the parameters the engine uses."""
    import torch

    params = dict(SMALL)
    params.update(size)
    out = pipe(prompt=prompt, guidance_scale=guidance_scale, generator=torch.Generator("cpu").manual_seed(seed),
               max_sequence_length=512, **params)
    return pixels(out.images[0])


def adapter_names_in_model(transformer) -> set[str]:
    """Every adapter name that has LoRA weights in some layer of ``transformer`` (PEFT's bookkeeping aside)."""
    names: set[str] = set()
    for module in transformer.modules():
        lora_a = getattr(module, "lora_A", None)
        if lora_a is not None and hasattr(lora_a, "keys"):
            names.update(lora_a.keys())
    return names
