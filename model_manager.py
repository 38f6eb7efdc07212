"""``ModelManager``: the task-level Python API our users' scripts already call.

    from model_manager import ModelManager
    manager = ModelManager()
    image = manager.generate(task="host_face", prompt="科普主持人，专业形象，微笑", width=1024, height=1024)

Tasks come from ``models/tasks.toml``; a call's ``lora_alpha`` overrides the task's strength for that call
only, and ``loras={"film_look": 0.4}`` sets the strengths of registered LoRAs by name (adding them to the
task's: several LoRAs at once). ``generate`` returns a ``PIL.Image`` (as before); what was actually done (adapter file, strength, seed,
warnings, timings) is in ``manager.last_result.info``, or use ``generate_result`` to get both at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Iterator

from pipelines.engine import FluxEngine
from pipelines.settings import Settings, load_settings
from pipelines.types import GenerationRequest, GenerationResult, ProgressCallback

if TYPE_CHECKING:
    from PIL.Image import Image

_EDIT_HINT = ("task settings are read from models/tasks.toml; edit that file (then restart), or pass "
              "lora_alpha=... to generate() for one call")


class _ReadOnlyDict(dict):
    """A dict that refuses writes loudly: editing it used to be how strengths were changed."""

    def _refuse(self, *args, **kwargs):
        raise TypeError(f"lora_configs is read-only: {_EDIT_HINT}")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _refuse


class _LoraConfigs(Mapping):
    def __init__(self, data: dict[str, _ReadOnlyDict]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> _ReadOnlyDict:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __setitem__(self, key, value):
        raise TypeError(f"lora_configs is read-only: {_EDIT_HINT}")

    def __repr__(self) -> str:
        return repr(self._data)


class ModelManager:
    """Task -> (LoRA, strength, prompt template) on top of one shared :class:`FluxEngine`."""

    def __init__(self, settings: Settings | None = None, *, engine: FluxEngine | None = None) -> None:
        self.settings = settings or (engine.settings if engine else load_settings())
        self.engine = engine or FluxEngine.from_settings(self.settings)
        self.last_result: GenerationResult | None = None

    @property
    def tasks(self) -> list[str]:
        return self.engine.tasks.names()

    @property
    def loras(self) -> list[dict]:
        """The registered LoRAs (name, file, sha256, rank, targets, tasks using them)."""
        return self.engine.lora_infos()

    @property
    def lora_configs(self) -> Mapping[str, Mapping]:
        """Per task: ``lora_path`` (the resident weights file, or None), ``lora_alpha`` and the rest."""
        data = {}
        resident = {a.name: a for a in self.engine.resident_adapters()}
        for info in self.engine.task_infos():
            adapter = resident.get(info.adapter_name) if info.adapter_name else None
            data[info.name] = _ReadOnlyDict(
                lora_path=str(adapter.file) if adapter else None,
                lora_alpha=info.lora_alpha,
                adapter_name=info.adapter_name,
                trigger_words=list(info.trigger_words),
                prompt_template=info.prompt_template,
                width=info.width, height=info.height,
                num_inference_steps=info.num_inference_steps, guidance_scale=info.guidance_scale,
            )
        return _LoraConfigs(data)

    def generate_result(self, task: str, prompt: str, width: int | None = None, height: int | None = None, *,
                        lora_alpha: float | None = None, seed: int | None = None,
                        num_inference_steps: int | None = None, guidance_scale: float | None = None,
                        loras=None, translate: str | None = None,
                        progress: ProgressCallback | None = None) -> GenerationResult:
        """``loras``: {name: scale}, [(name, scale)] or [{"name", "scale"}] of LoRAs registered in the task table.
        ``translate``: "auto" (default), "glossary" or "off": what happens to a Chinese prompt before the
        text encoders read it (see docs/lora-guide.en.md); the result's info says what was sent."""
        from pipelines.lora.registry import normalise_request_loras

        req = GenerationRequest(prompt=prompt, task=task, lora_alpha=lora_alpha, width=width, height=height,
                                num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, seed=seed,
                                loras=normalise_request_loras(loras), translate=translate)
        self.last_result = self.engine.generate(req, progress=progress)
        return self.last_result

    def generate(self, task: str, prompt: str, width: int | None = None, height: int | None = None,
                 **kwargs) -> "Image":
        """Generate with the task's LoRA and strength; returns the image (details in ``last_result``)."""
        return self.generate_result(task, prompt, width, height, **kwargs).image
