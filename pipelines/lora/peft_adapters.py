"""``PeftAdapters``: unfused PEFT LoRA layers, one implementation of ``AdapterStrategy`` (``strategy.py``).

Why keep it beside the fused default: it is diffusers' own path (``load_lora_adapter`` + ``set_adapters``),
exact and simple, the reference the fused strategy is tested against, and what ``FLUX_ADAPTERS=peft`` serves.
"""

from __future__ import annotations

import logging

from pipelines.errors import AdapterError, AdapterMismatch
from pipelines.lora.files import check_fits, linear_shapes
from pipelines.lora.weights import COMPONENTS, LoraWeights

logger = logging.getLogger(__name__)


class PeftAdapters:
    """Unfused PEFT LoRA layers (diffusers ``load_lora_adapter`` + ``set_adapters``)."""

    kind = "peft"

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self._loaded: set[str] = set()
        self._active: tuple[tuple[str, float], ...] = ()  # the active set, in the order given
        self._known = True  # False while a switch is in flight: state recorded only after it succeeded
        self._switches = 0

    @property
    def active(self) -> tuple[str, float] | None:
        """The first active (name, scale), or None (the single-LoRA view)."""
        return self._active[0] if self._active else None

    @property
    def active_set(self) -> tuple[tuple[str, float], ...]:
        return self._active

    @property
    def switches(self) -> int:
        return self._switches

    def load(self, name: str, lora: LoraWeights) -> None:
        if name in self._loaded:
            raise AdapterError(f"adapter name {name!r} is already loaded", path=str(lora.path))
        components = lora.components
        check_fits(lora, {c: linear_shapes(getattr(self._pipe, c)) for c in COMPONENTS})
        try:
            if "transformer" in components:
                kwargs: dict = {"adapter_name": name, "prefix": "transformer", "_pipeline": self._pipe}
                if lora.config:
                    kwargs["metadata"] = {f"transformer.{k}": v for k, v in lora.config.items()}
                elif lora.network_alphas:
                    kwargs["network_alphas"] = lora.network_alphas
                self._pipe.transformer.load_lora_adapter(
                    {k: v for k, v in lora.state_dict.items() if k.startswith("transformer.")}, **kwargs)
            if "text_encoder" in components:
                self._load_text_encoder(name, lora)
            self._verify_loaded(name, lora)
        except AdapterError:
            self._discard(name)
            raise
        except Exception as exc:  # PEFT raises RuntimeError/ValueError on size or config problems
            self._discard(name)
            raise AdapterMismatch(f"LoRA {lora.path} could not be attached: {type(exc).__name__}: {exc}",
                                  path=str(lora.path)) from None
        self._loaded.add(name)
        # A freshly loaded adapter is active in PEFT; restore what was active before.
        self._apply(self._active)

    def _load_text_encoder(self, name: str, lora: LoraWeights) -> None:
        """The CLIP part, the way ``FluxPipeline.load_lora_weights`` does it (diffusers -> transformers' PEFT
        integration, which needs peft >= its MIN_PEFT_VERSION: see the pins in pyproject.toml)."""
        from diffusers import FluxPipeline

        metadata = ({f"text_encoder.{k}": v for k, v in lora.text_encoder_config.items()}
                    if lora.text_encoder_config else None)
        alphas = None if metadata else lora.network_alphas
        FluxPipeline.load_lora_into_text_encoder(
            {f"text_encoder.{k}": v for k, v in lora.component_state_dict("text_encoder").items()},
            network_alphas=alphas, text_encoder=self._pipe.text_encoder, prefix="text_encoder",
            adapter_name=name, _pipeline=self._pipe, metadata=metadata)

    def activate(self, name: str | None, scale: float) -> None:
        self.activate_set([] if name is None else [(name, scale)])

    def activate_set(self, items) -> None:
        target = tuple((n, float(s)) for n, s in items if float(s) != 0.0)
        if target == self._active and self._known:
            return
        for n, _ in target:
            if n not in self._loaded:
                raise AdapterError(f"adapter {n!r} is not loaded")
        self._known = False
        self._apply(target)
        self._active, self._known = target, True
        self._switches += 1

    def unload(self, name: str) -> None:
        """Free ``name``'s LoRA layers (a Ray replica's LRU of LoRAs, app/ray_serve). Taken out of the active
        set first if active; afterwards the model computes exactly as if the adapter had never been loaded."""
        if name not in self._loaded:
            raise AdapterError(f"adapter {name!r} is not loaded")
        if any(n == name for n, _ in self._active):
            self.activate_set([(n, s) for n, s in self._active if n != name])
        transformer, text_encoder = self._pipe.transformer, self._pipe.text_encoder
        if name in getattr(transformer, "peft_config", {}):
            transformer.delete_adapters([name])
        if name in getattr(text_encoder, "peft_config", {}):
            text_encoder.delete_adapter(name)
        self._loaded.discard(name)

    def _apply(self, target: tuple[tuple[str, float], ...]) -> None:
        if not self._loaded:
            return
        if not target:
            self._pipe.disable_lora()
        else:
            self._pipe.enable_lora()
            self._pipe.set_adapters([n for n, _ in target], [s for _, s in target])

    def _verify_loaded(self, name: str, lora: LoraWeights) -> None:
        """Every tensor of the file must now sit in a LoRA layer under ``name``, value for value, and every
        layer's scaling must be what :meth:`LoraWeights.scale_factors` says (what inspect and results report)."""
        import torch

        modules = {c: dict(getattr(self._pipe, c).named_modules()) for c in lora.components}
        expected = lora.scale_factors()
        missing, wrong_scale = [], []
        for key, tensor in lora.state_dict.items():
            component, rest = key.split(".", 1)
            module_name, which = rest.rsplit(".lora_", 1)
            layer = modules[component].get(module_name)
            attr = {"A.weight": "lora_A", "B.weight": "lora_B", "magnitude_vector": "lora_magnitude_vector"}[which]
            store = getattr(layer, attr, None)
            if store is None or name not in store:
                missing.append(key)
                continue
            loaded = store[name].weight
            if loaded.shape != tensor.shape or not torch.equal(loaded.detach().cpu(), tensor.to(loaded.dtype)):
                missing.append(key)
            elif attr == "lora_A" and layer.scaling.get(name) != expected.get(f"{component}.{module_name}"):
                wrong_scale.append(f"{component}.{module_name}: {layer.scaling.get(name)} vs "
                                   f"{expected.get(f'{component}.{module_name}')}")
        if missing:
            raise AdapterMismatch(f"LoRA {lora.path}: {len(missing)} of {len(lora.state_dict)} tensors were not "
                                  f"attached to the model (e.g. {', '.join(missing[:3])})", path=str(lora.path))
        if wrong_scale:
            raise AdapterMismatch(f"LoRA {lora.path}: the loaded layers scale differently from what this file's "
                                  f"config says (e.g. {', '.join(wrong_scale[:2])}); refusing rather than "
                                  "reporting a strength that is not applied", path=str(lora.path))

    def _discard(self, name: str) -> None:
        transformer, text_encoder = self._pipe.transformer, self._pipe.text_encoder
        try:
            if name in getattr(transformer, "peft_config", {}):
                transformer.delete_adapters([name])
            if name in getattr(text_encoder, "peft_config", {}):
                text_encoder.delete_adapter(name)
        except Exception:  # cleaning up after a failure must not hide the failure
            logger.exception("could not remove half-loaded adapter %s", name)
