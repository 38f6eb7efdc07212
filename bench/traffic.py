"""Bytes that tensor operations read and write, counted by instrumenting them (not by timing).

Why: a LoRA switch on FLUX.1-dev is memory-bound (a rank-16 matmul per weight is almost no arithmetic), so
its cost is the bytes it moves. Counting them on a CPU, or on the ``meta`` device with no memory at all, says
what a GPU switch will cost before any GPU is lent: bytes / memory bandwidth.

``Traffic`` is a ``TorchDispatchMode``: every aten operation run inside ``with Traffic() as t:`` is recorded
with the bytes of the tensors it reads and writes, by dtype. Rules, from each operation's schema:

- an argument the operation writes (``out=``, ``self`` of ``addmm_`` / ``copy_``) counts as written; it also
  counts as read unless the operation only overwrites it (``copy_``, ``fill_``, ``zero_``, ``empty``...);
- every other tensor argument counts as read; every returned tensor that is not a written argument counts as
  written (a new tensor).

Views and metadata-only operations (``view``, ``t``, ``detach``, ``alias``...) move nothing and count nothing.
"""

from __future__ import annotations

from collections import defaultdict

#: operations that overwrite their destination without reading it
_OVERWRITE = {"copy_", "fill_", "zero_", "normal_", "uniform_", "random_", "set_", "resize_"}
#: operations that only make views or change metadata
_NO_DATA = {"view", "_unsafe_view", "t", "transpose", "permute", "detach", "alias", "expand", "as_strided",
            "slice", "select", "unsqueeze", "squeeze", "reshape", "_reshape_alias", "lift_fresh", "empty",
            "empty_like", "empty_strided", "new_empty", "new_empty_strided", "split", "unbind", "narrow",
            "_to_copy_noop"}


def _name(func) -> str:
    return func.__name__.split(".")[0]


def _tensors(value):
    import torch

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)


def _nbytes(t) -> int:
    return t.numel() * t.element_size()


class Traffic:
    """Context manager counting bytes read and written by aten operations, in total and per dtype/operation."""

    def __init__(self) -> None:
        self.read = 0
        self.written = 0
        self.by_dtype: dict[str, int] = defaultdict(int)  # read + written, per dtype
        self.by_op: dict[str, int] = defaultdict(int)  # read + written, per operation
        self.ops = 0
        self._mode = None

    @property
    def total(self) -> int:
        return self.read + self.written

    def __enter__(self) -> "Traffic":
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                out = func(*args, **kwargs)
                counter._record(func, args, kwargs, out)
                return out

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)

    def _record(self, func, args, kwargs, out) -> None:
        name = _name(func)
        if name in _NO_DATA:
            return
        written_ids: set[int] = set()
        read = written = 0
        per_dtype: dict[str, int] = defaultdict(int)
        schema_args = func._schema.arguments
        values = list(args) + [kwargs[a.name] for a in schema_args[len(args):] if a.name in kwargs]
        for spec, value in zip(schema_args, values):
            is_write = spec.alias_info is not None and spec.alias_info.is_write
            for t in _tensors(value):
                n = _nbytes(t)
                if is_write:
                    written_ids.add(id(t))
                    written += n
                    per_dtype[str(t.dtype).removeprefix("torch.")] += n
                if not is_write or name not in _OVERWRITE:
                    read += n
                    per_dtype[str(t.dtype).removeprefix("torch.")] += n
        for t in _tensors(out):
            if id(t) not in written_ids and not any(t is w for w in _tensors(values)):
                written += _nbytes(t)
                per_dtype[str(t.dtype).removeprefix("torch.")] += _nbytes(t)
        self.read += read
        self.written += written
        self.by_op[name] += read + written
        for k, v in per_dtype.items():
            self.by_dtype[k] += v
        self.ops += 1

    def summary(self) -> str:
        parts = ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in sorted(self.by_dtype.items()))
        return f"{self.total / 1e9:.2f} GB moved ({self.read / 1e9:.2f} read, {self.written / 1e9:.2f} written; {parts})"
