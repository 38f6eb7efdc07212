"""A fused switch moves the weights once each way in their own dtype: no float32 round trip (issue 18, item 1).

A LoRA switch on FLUX.1-dev is memory-bound (342 weights, 5.4 B parameters, a rank-16 matmul each), so its cost
is the bytes it moves. They are counted by instrumenting the switch (bench/traffic.py: every aten operation's
reads and writes), not by timing. The former arithmetic converted each bf16 backup to float32, added ``B @ A``
and cast back: 20 bytes per parameter (108 GB per switch on FLUX.1-dev); copying the backup in and one
``addmm_`` in the weight's dtype (float32 accumulation inside the kernel, one rounding) moves 8.
"""

from __future__ import annotations

import pytest

from bench.traffic import Traffic
from tests.engine_helpers import fresh_bare_pipe


@pytest.fixture(scope="module")
def bf16_fused(engine):
    """A fresh demo pipeline in bf16 with the demo LoRA and a second one resident (fused strategy)."""
    import torch

    from bench.flux_arch import random_lora
    from pipelines.lora.files import read_lora
    from pipelines.lora.fused_adapters import FusedAdapters

    pipe = fresh_bare_pipe(engine).to(torch.bfloat16)
    adapters = FusedAdapters(pipe)
    adapters.load("demo", read_lora(engine.source.models_root / "lora" / "host_person" /
                                    "pytorch_lora_weights.safetensors"))
    adapters.load("other", random_lora(pipe.transformer, 4, seed=5, which="attn"))
    return pipe, adapters


def _keys(adapters, names) -> set:
    return {d.slot for n in names for d in adapters._deltas[n]}


def _weight_bytes(adapters, keys) -> int:
    return sum(adapters._weights[k].numel() * adapters._weights[k].element_size() for k in keys)


def _factor_bytes(adapters, names) -> int:
    return sum(t.numel() * t.element_size() for n in names for d in adapters._deltas[n]
               for t in (d.recipe.down, d.recipe.up))


@pytest.mark.parametrize("change", ["strength", "switch", "two_loras"])
def test_bf16_switch_moves_each_weight_once_each_way_in_bf16(bf16_fused, change):
    pipe, adapters = bf16_fused
    first, then = {"strength": ([("demo", 0.7)], [("demo", 0.8)]),
                   "switch": ([("other", 0.7)], [("demo", 0.7)]),
                   "two_loras": ([], [("demo", 0.7), ("other", 0.5)])}[change]
    adapters.activate_set(first)
    with Traffic() as t:
        adapters.activate_set(then)
    names = [n for n, _ in then]
    merged = _keys(adapters, names)  # rebuilt from their backup
    restored = _keys(adapters, [n for n, _ in first]) - merged  # only put back
    assert t.by_dtype.get("float32", 0) == 0, f"float32 traffic in a bf16 switch: {dict(t.by_op)}"
    # each merged weight: the backup copied in (read + write) and one addmm_ (read + write) = 4x its bytes, plus
    # the small factors (stacked for two LoRAs); a weight only put back: one copy (2x)
    expected = 4 * _weight_bytes(adapters, merged) + 2 * _weight_bytes(adapters, restored)
    assert expected <= t.total <= expected + 5 * _factor_bytes(adapters, names)


def test_factors_are_kept_in_the_weights_dtype(bf16_fused):
    import torch

    _, adapters = bf16_fused
    assert {d.recipe.down.dtype for ds in adapters._deltas.values() for d in ds} == {torch.bfloat16}
    assert {d.recipe.up.dtype for ds in adapters._deltas.values() for d in ds} == {torch.bfloat16}


def test_bf16_in_dtype_merge_is_within_one_bf16_step_of_the_float32_merge(bf16_fused):
    """The in-dtype ``addmm_`` (float32 accumulation in the kernel, one rounding) against the former arithmetic
    (float32 copy, float32 add, one cast): the two roundings of the same float32 sum differ by at most one bf16
    step (the accumulation order inside the kernels differs)."""
    import torch

    pipe, adapters = bf16_fused
    adapters.activate_set([("demo", 0.9)])
    for d in adapters._deltas["demo"]:
        got = adapters._weights[d.slot].detach().double()
        former = torch.addmm(adapters._backup[d.slot].float(), d.recipe.up.float(), d.recipe.down.float(),
                             alpha=0.9 * d.recipe.scale).to(torch.bfloat16).double()
        _, exponent = torch.frexp(torch.maximum(got.abs(), former.abs()))
        step = torch.ldexp(torch.ones_like(got), exponent - 8)  # bf16: 8 significant bits
        assert bool(((got - former).abs() <= step).all()), d.key
    adapters.activate_set([])
