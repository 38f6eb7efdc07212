"""Delta recipes: what a LoRA-like file adds to one tensor of the model, and the exact math to add it.

Why one form: LoRA files from the wild describe a weight change in several ways (low-rank ``B @ A``, LyCORIS'
Kronecker and Hadamard products, ComfyUI's full ``diff`` and bias ``diff_b``, DoRA's magnitude). Every reader
(pipelines/lora/formats.py, lycoris.py) turns a file into one recipe per target tensor (``Target``: component,
module, ``weight`` or ``bias``); the fused strategy applies recipes with :func:`merge_terms`, the PEFT strategy
hands the kinds PEFT has layers for to those layers, and ``lora inspect`` describes them. A recipe never
depends on the model; where a file's layer covers several of ours (kohya's fused ``qkv``), the reader cuts
the recipe by rows (:meth:`rows`), which stays exact and, where the math allows, stays factored.

Math, at strength ``s`` (each recipe's ``scale`` is the file's own ``alpha / rank`` or equivalent):

- ``LowRank``   ``s * scale * up @ down``                          (LoRA; kohya ``lora_up``/``lora_down``)
- ``Kronecker`` ``s * scale * kron(w1, w2)``, each factor full or ``a @ b`` (w2 optionally with a Tucker core)
- ``Hadamard``  ``s * scale * (w1a @ w1b) * (w2a @ w2b)``          (LyCORIS LoHa)
- ``Full``      ``s * scale * diff``                                (ComfyUI ``diff``, ``diff_b``; LoRA biases)
- ``Dora``      ``W <- m / ||W0 + s*scale*up@down||_row * (W + s*scale*up@down)``: PEFT's DoRA exactly (norm
  per output row, taken on the base weight ``W0`` plus this adapter alone, and applied to what the layer
  computes so far, as PEFT's ``DoraLinearVariant`` does with the running result).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

#: (component, module, "weight" | "bias"): the model tensor a recipe changes, in diffusers naming
Target = tuple[str, str, str]


def _torch():
    import torch

    return torch


def _f32(t, device=None):
    return t.to(device=device if device is not None else t.device, dtype=_torch().float32)


@dataclass
class Recipe:
    """Base: ``matrix()`` is the change at strength 1.0 (float32), ``rows`` cuts it, ``add_to`` applies it."""

    scale: float = 1.0

    kind = "delta"

    @property
    def shape(self) -> tuple[int, ...]:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def matrix(self):
        raise NotImplementedError  # pragma: no cover

    def to(self, device) -> "Recipe":
        """The same recipe with its tensors in float32 on ``device`` (what the fused strategy keeps)."""
        raise NotImplementedError  # pragma: no cover

    def rows(self, start: int, stop: int) -> "Recipe":
        """The recipe of rows ``start:stop`` of the change (a kohya ``qkv`` layer -> q, k, v)."""
        return RowSlice(parent=self, start=start, stop=stop)

    def swap_halves(self) -> "Recipe":
        """Rows ``[n/2:] + [:n/2]``: BFL's final-layer modulation stores (shift, scale), diffusers (scale, shift)."""
        half = self.shape[0] // 2
        return Stacked(parts=[self.rows(half, self.shape[0]), self.rows(0, half)])

    def add_to(self, merged, base, strength: float) -> None:
        """``merged += strength * change`` (in place). ``base`` is W0, used by DoRA only."""
        merged.add_(self.matrix().to(merged.dtype), alpha=strength)

    def effective_scale(self) -> float:
        """The factor strength 1.0 multiplies this recipe's stored product by (what results report)."""
        return float(self.scale)

    def describe(self) -> dict:
        return {"kind": self.kind, "scale": round(self.effective_scale(), 6)}


@dataclass
class LowRank(Recipe):
    up: object = None  # (out, r)
    down: object = None  # (r, in)
    kind = "LoRA"

    @property
    def shape(self):
        return (self.up.shape[0], self.down.shape[1])

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    def matrix(self):
        return (_f32(self.up) @ _f32(self.down)) * self.scale

    def to(self, device):
        return replace(self, up=_f32(self.up, device).contiguous(), down=_f32(self.down, device).contiguous())

    def rows(self, start, stop):
        return replace(self, up=self.up[start:stop])

    def swap_halves(self):
        half = self.up.shape[0] // 2
        return replace(self, up=_torch().cat([self.up[half:], self.up[:half]]))

    def add_to(self, merged, base, strength):
        merged.addmm_(self.up.to(merged.dtype), self.down.to(merged.dtype), alpha=strength * self.scale)

    def describe(self):
        return {**super().describe(), "rank": self.rank}


def _tucker2d(core, a, b):
    """LyCORIS' Tucker rebuild for a linear layer: ``a`` (r, out), ``b`` (r, in), ``core`` (r, r) -> (out, in)."""
    core = core.reshape(core.shape[0], core.shape[1])
    return _f32(a).T @ _f32(core) @ _f32(b)


@dataclass
class Kronecker(Recipe):
    """LyCORIS LoKr: ``kron(w1, w2)``; ``w1`` is ``w1`` or ``w1_a @ w1_b``, ``w2`` is ``w2``, ``w2_a @ w2_b`` or,
    with a Tucker core ``t2``, ``w2_a.T @ t2 @ w2_b``."""

    w1: object = None
    w1_a: object = None
    w1_b: object = None
    w2: object = None
    w2_a: object = None
    w2_b: object = None
    t2: object = None
    kind = "LoKr"

    def factor1(self):
        return _f32(self.w1) if self.w1 is not None else _f32(self.w1_a) @ _f32(self.w1_b)

    def factor2(self):
        if self.w2 is not None:
            return _f32(self.w2)
        if self.t2 is not None:
            return _tucker2d(self.t2, self.w2_a, self.w2_b)
        return _f32(self.w2_a) @ _f32(self.w2_b)

    def factor_shapes(self) -> tuple[tuple[int, int], tuple[int, int]]:
        w1 = self.w1.shape if self.w1 is not None else (self.w1_a.shape[0], self.w1_b.shape[1])
        if self.w2 is not None:
            w2 = self.w2.shape
        elif self.t2 is not None:
            w2 = (self.w2_a.shape[1], self.w2_b.shape[1])
        else:
            w2 = (self.w2_a.shape[0], self.w2_b.shape[1])
        return (int(w1[0]), int(w1[1])), (int(w2[0]), int(w2[1]))

    @property
    def shape(self):
        (a, c), (b, d) = self.factor_shapes()
        return (a * b, c * d)

    def matrix(self):
        return _torch().kron(self.factor1(), self.factor2()) * self.scale

    def to(self, device):
        return replace(self, **{k: _f32(v, device).contiguous() for k, v in self._tensors().items()})

    def _tensors(self) -> dict:
        names = ("w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b", "t2")
        return {k: getattr(self, k) for k in names if getattr(self, k) is not None}

    def _slice_w1(self, r0: int, r1: int) -> "Kronecker":
        if self.w1 is not None:
            return replace(self, w1=self.w1[r0:r1])
        return replace(self, w1_a=self.w1_a[r0:r1])

    def rows(self, start, stop):
        """Rows of ``kron(w1, w2)`` are blocks of ``w2``'s height: a cut on block edges is a smaller Kronecker
        product (``w1``'s rows sliced); any other cut is computed from the few blocks it spans."""
        b = self.factor_shapes()[1][0]
        r0, r1 = start // b, -(-stop // b)
        part = self._slice_w1(r0, r1)
        if start % b == 0 and stop % b == 0:
            return part
        return RowSlice(parent=part, start=start - r0 * b, stop=stop - r0 * b)

    def swap_halves(self):
        a = self.factor_shapes()[0][0]
        if a % 2:
            return super().swap_halves()
        name = "w1" if self.w1 is not None else "w1_a"
        rows = getattr(self, name)
        return replace(self, **{name: _torch().cat([rows[a // 2:], rows[:a // 2]])})

    def describe(self):
        (a, c), (b, d) = self.factor_shapes()
        out = {**super().describe(), "w1": f"{a}x{c}" + (" (low-rank)" if self.w1 is None else ""),
               "w2": f"{b}x{d}" + (" (Tucker)" if self.t2 is not None else " (low-rank)" if self.w2 is None else "")}
        rank = self.rank
        if rank:
            out["rank"] = rank
        return out

    @property
    def rank(self) -> int | None:
        """The rank of the decomposed factor (what ``alpha`` is divided by), None when both are full."""
        if self.w2 is None:
            return int(self.w2_b.shape[0])
        if self.w1 is None:
            return int(self.w1_b.shape[0])
        return None


@dataclass
class Hadamard(Recipe):
    """LyCORIS LoHa: ``(w1_a @ w1_b) * (w2_a @ w2_b)``."""

    w1_a: object = None
    w1_b: object = None
    w2_a: object = None
    w2_b: object = None
    kind = "LoHa"

    @property
    def shape(self):
        return (self.w1_a.shape[0], self.w1_b.shape[1])

    @property
    def rank(self) -> int:
        return int(self.w1_b.shape[0])

    def matrix(self):
        return (_f32(self.w1_a) @ _f32(self.w1_b)) * (_f32(self.w2_a) @ _f32(self.w2_b)) * self.scale

    def to(self, device):
        return replace(self, w1_a=_f32(self.w1_a, device).contiguous(), w1_b=_f32(self.w1_b, device).contiguous(),
                       w2_a=_f32(self.w2_a, device).contiguous(), w2_b=_f32(self.w2_b, device).contiguous())

    def rows(self, start, stop):
        return replace(self, w1_a=self.w1_a[start:stop], w2_a=self.w2_a[start:stop])

    def swap_halves(self):
        half = self.w1_a.shape[0] // 2
        cat = _torch().cat
        return replace(self, w1_a=cat([self.w1_a[half:], self.w1_a[:half]]),
                       w2_a=cat([self.w2_a[half:], self.w2_a[:half]]))

    def describe(self):
        return {**super().describe(), "rank": self.rank}


@dataclass
class Full(Recipe):
    """A stored difference: ComfyUI's ``diff`` (a whole weight or a norm's scale) and ``diff_b`` (a bias), and
    a PEFT LoRA's ``lora_B.bias`` (applied with the LoRA's scale, as PEFT does)."""

    diff: object = None
    kind = "full"

    @property
    def shape(self):
        return tuple(self.diff.shape)

    def matrix(self):
        return _f32(self.diff) * self.scale

    def to(self, device):
        return replace(self, diff=_f32(self.diff, device).contiguous())

    def rows(self, start, stop):
        return replace(self, diff=self.diff[start:stop])

    def swap_halves(self):
        half = self.diff.shape[0] // 2
        return replace(self, diff=_torch().cat([self.diff[half:], self.diff[:half]]))

    def add_to(self, merged, base, strength):
        merged.add_(self.diff.to(merged.dtype), alpha=strength * self.scale)


@dataclass
class Dora(Recipe):
    """PEFT's DoRA: a LoRA whose result is rescaled per output row to the trained magnitude ``m``."""

    lora: LowRank | None = None
    magnitude: object = None  # (out,)
    kind = "DoRA"

    @property
    def shape(self):
        return self.lora.shape

    def matrix(self):
        raise TypeError("a DoRA change depends on the base weight and the strength; use add_to")

    def to(self, device):
        return replace(self, lora=self.lora.to(device), magnitude=_f32(self.magnitude, device).contiguous())

    def effective_scale(self):
        return self.lora.effective_scale()

    def rows(self, start, stop):  # row norms are per row: a row block is a DoRA of its own
        return replace(self, lora=self.lora.rows(start, stop), magnitude=self.magnitude[start:stop])

    def swap_halves(self):
        half = self.magnitude.shape[0] // 2
        return replace(self, lora=self.lora.swap_halves(),
                       magnitude=_torch().cat([self.magnitude[half:], self.magnitude[:half]]))

    def add_to(self, merged, base, strength):
        torch = _torch()
        delta = (self.lora.up.float() @ self.lora.down.float()) * (strength * self.lora.scale)
        norm = torch.linalg.norm(base.float() + delta, dim=1)
        ratio = (self.magnitude.float() / norm).unsqueeze(1)
        merged.add_(delta.to(merged.dtype)).mul_(ratio.to(merged.dtype))

    def describe(self):
        return {**self.lora.describe(), "kind": self.kind}


@dataclass
class RowSlice(Recipe):
    """Rows of a recipe that cannot be cut in factored form (a Kronecker product cut off its block edges)."""

    parent: Recipe | None = None
    start: int = 0
    stop: int = 0

    @property
    def kind(self):
        return self.parent.kind

    @property
    def shape(self):
        return (self.stop - self.start, *self.parent.shape[1:])

    def matrix(self):
        return self.parent.matrix()[self.start:self.stop]

    def to(self, device):
        return replace(self, parent=self.parent.to(device))

    def effective_scale(self):
        return self.parent.effective_scale()

    @property
    def rank(self):
        return getattr(self.parent, "rank", None)

    def rows(self, start, stop):
        return replace(self, start=self.start + start, stop=self.start + stop)

    def describe(self):
        return {**self.parent.describe(), "cut": True}


@dataclass
class Stacked(Recipe):
    """Recipes stacked by rows (a half swap of a recipe that has no factored swap)."""

    parts: list = field(default_factory=list)

    @property
    def kind(self):
        return self.parts[0].kind

    @property
    def shape(self):
        return (sum(p.shape[0] for p in self.parts), *self.parts[0].shape[1:])

    def matrix(self):
        return _torch().cat([p.matrix() for p in self.parts])

    def to(self, device):
        return replace(self, parts=[p.to(device) for p in self.parts])

    def effective_scale(self):
        return self.parts[0].effective_scale()

    @property
    def rank(self):
        return getattr(self.parts[0], "rank", None)

    def describe(self):
        return self.parts[0].describe()


def merge_terms(merged, base, terms) -> None:
    """Apply ``terms`` [(recipe, strength), ...] to ``merged`` (a float copy of ``base``) in the given order.

    The one function the fused strategy calls per touched tensor. Order matters only for DoRA, which rescales
    what was merged before it (as PEFT's layer rescales its running result): callers pass the active set's order.
    """
    for recipe, strength in terms:
        if tuple(recipe.shape) != tuple(merged.shape):
            raise ValueError(f"{recipe.kind} change of shape {tuple(recipe.shape)} for a tensor of shape "
                             f"{tuple(merged.shape)}")
        recipe.add_to(merged, base, strength)
