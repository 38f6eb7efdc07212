"""torch.compile: task, LoRA and strength changes never recompile; a size not warmed up runs eagerly, counted.

On CPU the test uses Dynamo with the ``eager`` backend (FLUX_COMPILE_BACKEND=eager): Dynamo traces, guards and
recompiles exactly as with inductor (what is counted is every graph Dynamo hands to the backend), without
paying inductor's code generation. Short prompts (16 T5 tokens) keep the 100 calls fast.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.errors import ConfigError
from tests.conftest import make_settings
from tests.engine_helpers import pixels, request

SIZE = dict(width=32, height=32, num_inference_steps=1)


@pytest.fixture(scope="module")
def compiled():
    from pipelines.engine import FluxEngine

    engine = FluxEngine.from_settings(make_settings(compile="on", compile_backend="eager", max_sequence_length=16,
                                                    compile_warmup_sizes="32x32"))
    engine.warm_up()
    return engine


def test_warm_up_compiles_the_configured_size(compiled):
    assert compiled.compiled and compiled.compilations.total >= 1


def test_no_compilation_across_100_task_and_strength_changes_after_warm_up(compiled):
    before = compiled.compilations.total
    tasks = ["host_face", "science_background", "character_face"]
    for i in range(100):
        result = compiled.generate(request(task=tasks[i % 3], seed=i, **SIZE,
                                           lora_alpha=None if i % 3 == 1 else round(0.1 + (i % 17) / 10, 2)))
    assert compiled.compilations.total == before
    assert result.info.compiled and result.info.compilations == before
    assert compiled.adapters.switches >= 100


def test_a_size_not_warmed_up_runs_eagerly_without_compiling_and_is_counted(compiled):
    """The service never compiles on a request's path (a FLUX.1-dev compile takes about 2 minutes)."""
    before, eager_before = compiled.compilations.total, compiled.compilations.eager_images
    first = compiled.generate(request(task="host_face", width=48, height=32, num_inference_steps=1))
    again = compiled.generate(request(task="science_background", width=48, height=32, num_inference_steps=1))
    assert first.info.compilations == again.info.compilations == before  # 0 recompiles
    assert compiled.compilations.eager_images == eager_before + 2
    assert first.info.eager_size and not first.info.compiled
    warm = compiled.generate(request(task="host_face", **SIZE))  # the warmed-up size still runs compiled
    assert warm.info.compiled and not warm.info.eager_size and warm.info.compilations == before


def test_python_api_compiles_each_size_on_first_use_when_asked():
    """FLUX_COMPILE=on outside the service (no warm-up): a size compiles on its first call, as asked."""
    from pipelines.engine import FluxEngine

    engine = FluxEngine.from_settings(make_settings(compile="on", compile_backend="eager", max_sequence_length=16))
    result = engine.generate(request(**SIZE))
    assert result.info.compiled and result.info.compilations >= 1 and not result.info.eager_size


def test_compiled_strength_zero_equals_compiled_base_bit_for_bit(compiled):
    base = pixels(compiled.generate(request(**SIZE)))
    compiled.generate(request(task="host_face", lora_alpha=1.5, **SIZE))
    assert np.array_equal(pixels(compiled.generate(request(task="host_face", lora_alpha=0.0, **SIZE))), base)


def test_compile_on_with_peft_adapters_is_refused_with_the_reason():
    from pipelines.compile import should_compile

    with pytest.raises(ConfigError, match="FLUX_ADAPTERS=fused"):
        should_compile("on", "cpu", "peft")
    assert should_compile("auto", "cpu", "fused", serving=True) is False
    assert should_compile("auto", "cuda", "fused", serving=True) is True  # the service on a GPU
    assert should_compile("auto", "cuda", "fused") is False  # the CLI and the Python API: eager unless asked
    assert should_compile("on", "cuda", "fused") is True
    assert should_compile("auto", "cuda", "peft", serving=True) is False


def test_fp8_is_refused_with_a_clear_message_on_cpu(settings):
    from pipelines.engine import FluxEngine

    with pytest.raises(ConfigError, match="FLUX_QUANTIZE=fp8 needs a CUDA GPU"):
        FluxEngine.from_settings(make_settings(quantize="fp8"))
