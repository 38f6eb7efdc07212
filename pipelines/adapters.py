"""How LoRA weights reach the forward pass: one small interface, one implementation today.

Why an interface: today adapters are PEFT layers switched with diffusers' ``set_adapters`` (exact, simple,
about +12% per step on an H100, see shared/ANCHORS.md). A faster strategy (fuse the active adapter into the
base weights with an exact restore from a backup, which also keeps a ``torch.compile``d model from
recompiling) must be able to replace it without touching the engine or its callers. So the engine only
ever calls ``load`` once per adapter and ``activate`` once per generation.

Exactness contract of every strategy: ``activate(None)`` (or a scale of 0) gives bit-identical outputs
to a model that never saw a LoRA, and switching back and forth leaves no residue.
"""

from __future__ import annotations

import logging
from typing import Protocol

from .errors import AdapterError, AdapterMismatch
from .lora_files import LoraWeights, check_fits, linear_shapes

logger = logging.getLogger(__name__)


class AdapterStrategy(Protocol):
    def load(self, name: str, lora: LoraWeights) -> None:
        """Make ``lora`` resident under ``name`` (inactive). Raises AdapterError; leaves no half-loaded state."""

    def activate(self, name: str | None, scale: float) -> None:
        """Make ``name`` the only active adapter at ``scale``; ``None`` or 0.0: the base model alone."""

    @property
    def active(self) -> tuple[str, float] | None:
        """What is active now, or None for the base model."""

    # Optional: ``unload(name)`` frees a resident adapter (inactive afterwards). Ray replicas need it to keep
    # only their most recently used LoRAs resident (app/ray_serve); the engine calls it only when present.

    @property
    def switches(self) -> int:
        """How many times the active (adapter, scale) changed: a metric."""


class PeftAdapters:
    """Unfused PEFT LoRA layers (diffusers ``load_lora_adapter`` + ``set_adapters``)."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe
        self._loaded: set[str] = set()
        self._active: tuple[str, float] | None = None
        self._known = True  # False while a switch is in flight: state recorded only after it succeeded
        self._switches = 0

    @property
    def active(self) -> tuple[str, float] | None:
        return self._active

    @property
    def switches(self) -> int:
        return self._switches

    def load(self, name: str, lora: LoraWeights) -> None:
        transformer = self._pipe.transformer
        if name in self._loaded:
            raise AdapterError(f"adapter name {name!r} is already loaded", path=str(lora.path))
        check_fits(lora, linear_shapes(transformer))
        kwargs: dict = {"adapter_name": name, "prefix": "transformer", "_pipeline": self._pipe}
        if lora.config:
            kwargs["metadata"] = {f"transformer.{k}": v for k, v in lora.config.items()}
        elif lora.network_alphas:
            kwargs["network_alphas"] = lora.network_alphas
        try:
            transformer.load_lora_adapter(dict(lora.state_dict), **kwargs)
            self._verify_loaded(name, lora)
        except AdapterError:
            self._discard(name)
            raise
        except Exception as exc:  # PEFT raises RuntimeError/ValueError on size or config problems
            self._discard(name)
            raise AdapterMismatch(f"LoRA {lora.path} could not be attached: {exc}", path=str(lora.path)) from None
        self._loaded.add(name)
        # A freshly loaded adapter is active in PEFT; restore what was active before.
        self._apply(self._active)

    def activate(self, name: str | None, scale: float) -> None:
        target = None if (name is None or scale == 0.0) else (name, float(scale))
        if target == self._active and self._known:
            return
        if target is not None and target[0] not in self._loaded:
            raise AdapterError(f"adapter {name!r} is not loaded")
        self._known = False
        self._apply(target)
        self._active, self._known = target, True
        self._switches += 1

    def unload(self, name: str) -> None:
        """Free ``name``'s LoRA layers (a Ray replica's LRU of LoRAs, app/ray_serve). Deactivated first if
        active; afterwards the model computes exactly as if the adapter had never been loaded."""
        if name not in self._loaded:
            raise AdapterError(f"adapter {name!r} is not loaded")
        if self._active is not None and self._active[0] == name:
            self.activate(None, 0.0)
        self._pipe.transformer.delete_adapters([name])
        self._loaded.discard(name)

    def _apply(self, target: tuple[str, float] | None) -> None:
        if not self._loaded:
            return
        if target is None:
            self._pipe.disable_lora()
        else:
            self._pipe.enable_lora()
            self._pipe.set_adapters([target[0]], [target[1]])

    def _verify_loaded(self, name: str, lora: LoraWeights) -> None:
        """Every tensor of the file must now sit in a LoRA layer under ``name``, value for value."""
        import torch

        modules = dict(self._pipe.transformer.named_modules())
        missing = []
        for key, tensor in lora.state_dict.items():
            module_name, which = key[len("transformer."):].rsplit(".lora_", 1)
            layer = modules.get(module_name)
            store = getattr(layer, "lora_A" if which.startswith("A") else "lora_B", None)
            if store is None or name not in store:
                missing.append(key)
                continue
            loaded = store[name].weight
            if loaded.shape != tensor.shape or not torch.equal(loaded.detach().cpu(), tensor.to(loaded.dtype)):
                missing.append(key)
        if missing:
            raise AdapterMismatch(f"LoRA {lora.path}: {len(missing)} of {len(lora.state_dict)} tensors were not "
                                  f"attached to the model (e.g. {', '.join(missing[:3])})", path=str(lora.path))

    def _discard(self, name: str) -> None:
        transformer = self._pipe.transformer
        if name in getattr(transformer, "peft_config", {}):
            try:
                transformer.delete_adapters([name])
            except Exception:  # cleaning up after a failure must not hide the failure
                logger.exception("could not remove half-loaded adapter %s", name)
