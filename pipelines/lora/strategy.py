"""How LoRA weights reach the forward pass: one small interface, two implementations.

Why an interface: ``PeftAdapters`` (``peft_adapters.py``): PEFT layers switched with diffusers'
``set_adapters`` (exact, simple, about +12% per step on an H100, see shared/ANCHORS.md). ``FusedAdapters``
(``fused_adapters.py``, the default): the active set merged into the base weights with an exact restore from
a backup, which costs nothing per step and keeps a ``torch.compile``d model from recompiling.
``FLUX_ADAPTERS=fused|peft`` picks one (``build_strategy``); the engine only ever calls ``load`` once per
adapter and ``activate_set`` once per generation, with the whole set of (name, scale) a request uses.

Exactness contract of every strategy: ``activate(None)`` (or a scale of 0) gives bit-identical outputs
to a model that never saw a LoRA, and switching back and forth leaves no residue.
"""

from __future__ import annotations

from typing import Protocol

from pipelines.lora.weights import LoraWeights


class AdapterStrategy(Protocol):
    def load(self, name: str, lora: LoraWeights) -> None:
        """Make ``lora`` resident under ``name`` (inactive). Raises AdapterError; leaves no half-loaded state."""

    def activate(self, name: str | None, scale: float) -> None:
        """Make ``name`` the only active adapter at ``scale``; ``None`` or 0.0: the base model alone."""

    def activate_set(self, items) -> None:
        """Make exactly ``items`` [(name, scale), ...] active (several LoRAs at once); scale-0 entries are
        dropped; an empty set is the base model alone."""

    @property
    def active(self) -> tuple[str, float] | None:
        """What is active now, or None for the base model."""

    # Optional: ``unload(name)`` frees a resident adapter (inactive afterwards). Ray replicas need it to keep
    # only their most recently used LoRAs resident (app/ray_serve); the engine calls it only when present.

    @property
    def switches(self) -> int:
        """How many times the active (adapter, scale) changed: a metric."""


def build_strategy(pipe, settings) -> AdapterStrategy:
    """The strategy ``FLUX_ADAPTERS`` names, over ``pipe``."""
    if settings.adapters == "peft":
        from pipelines.lora.peft_adapters import PeftAdapters

        return PeftAdapters(pipe)
    from pipelines.lora.fused_adapters import FusedAdapters

    return FusedAdapters(pipe, settings.fused_backup)
