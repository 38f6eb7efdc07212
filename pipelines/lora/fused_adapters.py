"""``FusedAdapters``: LoRA merged into the base weights, restored exactly from a backup copy.

Why: unfused PEFT layers cost about +12% per denoising step on an H100 (shared/ANCHORS.md) and wrap every
targeted linear layer, which makes ``torch.compile`` slow to compile and recompile whenever a scale changes.
Here no module is ever wrapped: on activation each touched weight (or bias) becomes

    W = W0 + sum_i s_i * delta_i

where ``delta_i`` is LoRA ``i``'s recipe for that tensor (pipelines/lora/deltas.py: ``scale * B @ A``, a LoKr
Kronecker or LoHa Hadamard product, a stored ``diff``/bias delta; DoRA rescales the rows of what is merged
before it to the trained magnitude, with the row norms taken on ``W0``, as PEFT does at that strength).

When every term on a weight is a plain LoRA (the common case, and every file our trainer writes), the sum is
computed as ``W.copy_(W0); W.addmm_(B, A, alpha=s)``: the backup is copied in, then one matrix product adds the
LoRA inside the GEMM kernel, which accumulates in float32 and rounds once into the weight's dtype (bf16 on a
GPU). Several LoRAs on one weight have their ranks stacked, ``[B_1 | B_2] @ [s_1 A_1 ; s_2 A_2]``: still one
``addmm_``, one rounding. The LoRA factors are kept in the weight's dtype, as PEFT keeps them. A weight that no
active LoRA touches is put back by a plain copy of ``W0``. Other kinds (LoKr, LoHa, ``diff``, DoRA) are summed
in float32 from ``W0`` and cast once. So

- strength 0 (or no LoRA) is bit-identical to the base model, and switching back and forth leaves no
  residue: every state is computed from ``W0``, never by subtracting a delta (``unfuse_lora`` drifts in bf16);
- the forward graph never changes: a compiled transformer sees new weight *values* only, never recompiles;
- the step costs what the base model costs; a switch is memory-bound and moves each touched weight once each
  way twice (copy in, ``addmm_``): 8 bytes per bf16 parameter, about 43 GB for the 342 weights (5.4 B
  parameters) of a rank-16 attention + feed-forward LoRA on FLUX.1-dev. The former arithmetic (backup to
  float32, add, cast back) moved 20 bytes per parameter, 108 GB (tests/test_fused_switch_bytes.py counts them).
  The anchor's fused exact switch: 17.7 ms for those 342 weights on an H100 (shared/ANCHORS.md).

The price is the backup: one copy of every weight any resident LoRA touches (10.0 GiB in bf16 for a rank-16
attention + feed-forward LoRA on FLUX.1-dev, 16.0 GiB for our trainer's targets: bench/flux_memory.py).
``FLUX_FUSED_BACKUP`` says where it lives:

- ``device``: on the GPU; a restore is a device-to-device copy (fast), the memory is gone for activations;
- ``cpu``: in pinned host memory, in the weight's dtype; a restore is an asynchronous copy from pinned memory
  (``non_blocking``: a DMA over PCIe, about 10 GiB at ~25 GB/s: ~0.4 s for a full restore, paid only for the
  weights that change), any conversion happens on the device; GPU memory stays free;
- ``auto`` (default): on the GPU while at least ``_DEVICE_RESERVE_FRACTION`` of it stays free, else pinned
  host memory, decided per weight as LoRAs are loaded. On a CPU-only machine both are plain host memory.

Text-encoder LoRA tensors (``text_encoder.<module>.lora_A/B.weight``) are fused the same way into the pipeline's
``text_encoder``. Every recipe kind is fused exactly, DoRA included (its norms are computed at switch time
from the backup), so this strategy accepts every file the readers accept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from pipelines.errors import AdapterError, AdapterMismatch
from pipelines.lora.deltas import Dora, LowRank, merge_terms
from pipelines.lora.files import check_fits, linear_shapes
from pipelines.lora.weights import COMPONENTS, LoraWeights

logger = logging.getLogger(__name__)

#: auto backup: keep a backup on the GPU only while this share of its memory stays free afterwards
_DEVICE_RESERVE_FRACTION = 0.25

Target = tuple[tuple[str, float], ...]


@dataclass
class _Delta:
    key: tuple[str, str]  # (component, module name)
    param: str  # "weight" | "bias"
    #: pipelines.lora.deltas.Recipe at strength 1.0 on the tensor's device: a plain LoRA's factors in the
    #: weight's dtype (as PEFT keeps them; the fast path's addmm_ needs them so), any other kind in float32
    recipe: object

    @property
    def slot(self) -> tuple[str, str, str]:
        return (*self.key, self.param)


class FusedAdapters:
    """Exact fused switching: ``activate_set`` rewrites only the touched weights, from their backup."""

    kind = "fused"

    def __init__(self, pipe, backup: str = "auto") -> None:
        if backup not in ("auto", "device", "cpu"):
            raise ValueError(f"backup must be auto, device or cpu, got {backup!r}")
        self._pipe = pipe
        self._backup_mode = backup
        self._deltas: dict[str, list[_Delta]] = {}
        self._weights: dict[tuple[str, str], object] = {}  # key -> the nn.Linear's weight Parameter
        self._backup: dict[tuple[str, str], object] = {}  # key -> W0 (device or pinned host)
        self._dirty: set[tuple[str, str]] = set()  # weights that differ from W0 right now
        self._active: Target = ()
        self._known = True
        self._switches = 0

    # ------------------------------------------------------------------ state
    @property
    def active(self) -> tuple[str, float] | None:
        """The first active (name, scale), or None: the single-LoRA view older callers read."""
        return self._active[0] if self._active else None

    @property
    def active_set(self) -> Target:
        return self._active

    @property
    def switches(self) -> int:
        return self._switches

    def backup_bytes(self) -> dict[str, int]:
        """Bytes of backup held on the device and on the host: the memory price of this strategy."""
        out = {"device": 0, "host": 0}
        for t in self._backup.values():
            out["host" if t.device.type == "cpu" else "device"] += t.numel() * t.element_size()
        return out

    def device_backup_needed(self, component: str, module_names) -> int:
        """Bytes of accelerator memory a LoRA on ``module_names`` of ``component`` would add to the backup:
        its weights not backed up yet, when the backup may live on the device (``device``; ``auto`` counted
        as device: it prefers the GPU). 0 with ``FLUX_FUSED_BACKUP=cpu`` or for weights in host memory. The
        training admission counts it for the LoRA a training will register (training/runs.py)."""
        if self._backup_mode == "cpu":
            return 0
        modules = dict(getattr(self._pipe, component).named_modules())
        total = 0
        for name in module_names:
            weight = getattr(modules.get(name), "weight", None)
            if weight is None or (component, name, "weight") in self._backup or weight.device.type == "cpu":
                continue
            total += weight.numel() * weight.element_size()
        return total

    # ------------------------------------------------------------------ load
    def load(self, name: str, lora: LoraWeights) -> None:
        import torch

        if name in self._deltas:
            raise AdapterError(f"adapter name {name!r} is already loaded", path=str(lora.path))
        check_fits(lora, {c: linear_shapes(getattr(self._pipe, c)) for c in COMPONENTS  # as the peft strategy
                          if getattr(self._pipe, c, None) is not None})
        deltas: list[_Delta] = []
        new_backups: list[tuple[str, str, str]] = []
        try:
            with torch.no_grad():
                for (comp, module, param), recipe in lora.recipes().items():
                    tensor = self._tensor(comp, module, param, lora)
                    slot = (comp, module, param)
                    if slot not in self._backup:
                        self._backup[slot] = self._make_backup(tensor)
                        self._weights[slot] = tensor
                        new_backups.append(slot)
                    deltas.append(_Delta(key=(comp, module), param=param, recipe=_resident(recipe, tensor)))
        except BaseException:
            for slot in new_backups:  # leave no half-loaded state behind
                if slot not in self._dirty:
                    self._backup.pop(slot, None)
                    self._weights.pop(slot, None)
            raise
        self._deltas[name] = deltas

    def unload(self, name: str) -> None:
        """Free ``name`` (a Ray replica's LRU of LoRAs, app/ray_serve): taken out of the active set first (its
        weights rebuilt from ``W0`` like any switch), then its factors and every backup no other resident LoRA
        needs are dropped. Afterwards the model is exactly what it would be had ``name`` never been loaded."""
        if name not in self._deltas:
            raise AdapterError(f"adapter {name!r} is not loaded")
        if any(n == name for n, _ in self._active):
            self.activate_set([(n, s) for n, s in self._active if n != name])
        del self._deltas[name]
        still_needed = {d.slot for deltas in self._deltas.values() for d in deltas}
        for key in list(self._backup):
            if key not in still_needed and key not in self._dirty:
                del self._backup[key], self._weights[key]

    def _tensor(self, comp: str, module_name: str, param: str, lora: LoraWeights):
        import torch

        component = getattr(self._pipe, comp, None)
        module = dict(component.named_modules()).get(module_name) if component is not None else None
        tensor = getattr(module, param, None) if isinstance(module, torch.nn.Linear) else None
        if tensor is None:
            raise AdapterMismatch(f"LoRA {lora.path}: {comp}.{module_name} has no {param} the file could change (not a "
                                  "linear layer of the loaded model, or one without a bias)", path=str(lora.path))
        return tensor

    def _make_backup(self, weight):
        import torch

        if weight.device.type != "cuda":  # CPU (and the meta device of bench/flux_memory.py): a plain copy
            return weight.detach().clone()
        on_device = self._backup_mode == "device"
        if self._backup_mode == "auto":
            free, total = torch.cuda.mem_get_info(weight.device)
            on_device = free - weight.numel() * weight.element_size() > _DEVICE_RESERVE_FRACTION * total
        if on_device:
            return weight.detach().clone()
        host = torch.empty(weight.shape, dtype=weight.dtype, device="cpu", pin_memory=True)
        host.copy_(weight.detach())
        return host

    # ------------------------------------------------------------------ activate
    def activate(self, name: str | None, scale: float) -> None:
        self.activate_set([] if name is None else [(name, scale)])

    def activate_set(self, items) -> None:
        """Make exactly ``items`` [(name, scale), ...] active; scale-0 entries are dropped; [] = base model."""
        target: Target = tuple((n, float(s)) for n, s in items if float(s) != 0.0)
        if target == self._active and self._known:
            return
        for n, _ in target:
            if n not in self._deltas:
                raise AdapterError(f"adapter {n!r} is not loaded")
        self._known = False
        try:
            self._apply(target)
        except BaseException:
            self._restore_all()
            raise
        self._active, self._known = target, True
        self._switches += 1

    def _apply(self, target: Target) -> None:
        import torch

        wanted: dict[tuple[str, str, str], list[tuple[object, float]]] = {}
        for name, strength in target:  # in the active set's order: DoRA rescales what comes before it
            for d in self._deltas[name]:
                wanted.setdefault(d.slot, []).append((d.recipe, strength))
        with torch.no_grad():
            for key in self._dirty - set(wanted):
                self._weights[key].copy_(self._backup[key], non_blocking=True)
            for key, terms in wanted.items():
                _merge(self._weights[key], self._backup[key], terms)
        self._dirty = set(wanted)

    def _restore_all(self) -> None:
        """After a failed switch: every weight back to W0, the base model active (state known again)."""
        import torch

        with torch.no_grad():
            for key in list(self._dirty | set(self._backup)):
                self._weights[key].copy_(self._backup[key])
        self._dirty, self._active, self._known = set(), (), True
        logger.error("a LoRA switch failed; every fused weight was restored to the base model")


def _resident(recipe, tensor):
    """``recipe`` as the fused strategy keeps it on ``tensor``'s device: a plain LoRA in the tensor's dtype
    (the fast path multiplies its factors inside ``addmm_``), every other kind in float32."""
    if type(recipe) is LowRank:
        return replace(recipe, up=recipe.up.to(tensor.device, tensor.dtype).contiguous(),
                       down=recipe.down.to(tensor.device, tensor.dtype).contiguous())
    return recipe.to(tensor.device)


def _merge(weight, backup, terms: list[tuple[object, float]]) -> None:
    """``weight <- W0 + the terms`` [(recipe, strength), ...], from the backup, never from the current weight.

    Plain LoRAs only (the fast path): in the weight's own dtype, moving each byte as few times as possible: the
    backup is copied in (from pinned host memory without blocking the host), then one ``addmm_`` (float32
    accumulation inside the kernel, one rounding). Several LoRAs: ranks stacked, each strength folded into its
    ``down`` (an elementwise product rounded once, on a tensor of rank x in_features).
    Any other kind (LoKr, LoHa, full or bias deltas, DoRA): the backup is brought to the device as it is stored
    (non-blocking from pinned memory), converted there to float32, the recipes added in the active set's order
    (``merge_terms``), and the result cast once into the weight."""
    import torch

    if all(type(recipe) is LowRank for recipe, _ in terms):
        weight.copy_(backup, non_blocking=True)
        if len(terms) == 1:
            recipe, s = terms[0]
            weight.addmm_(recipe.up, recipe.down, alpha=s * recipe.scale)
            return
        up = torch.cat([recipe.up for recipe, _ in terms], dim=1)
        down = torch.cat([recipe.down * (s * recipe.scale) for recipe, s in terms], dim=0)
        weight.addmm_(up, down)
        return
    merged = backup.to(weight.device, non_blocking=True).to(torch.float32)
    if merged.data_ptr() == backup.data_ptr():  # already float32 on this device: work on a copy
        merged = merged.clone()
    base = merged.clone() if any(isinstance(recipe, Dora) for recipe, _ in terms) else None
    merge_terms(merged, base, terms)
    weight.copy_(merged)  # the one cast to the model's dtype
