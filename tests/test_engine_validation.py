"""Invalid parameters are refused before any tensor is touched, naming the parameter and the bad value."""

from __future__ import annotations

import pytest

from pipelines.errors import InvalidRequest
from tests.engine_helpers import request


@pytest.mark.parametrize(("overrides", "param", "quoted"), [
    (dict(width=72), "width", "got 72"),
    (dict(height=100), "height", "got 100"),
    (dict(width=8), "width", "got 8"),
    (dict(width=4096), "width", "got 4096"),
    (dict(num_inference_steps=0), "num_inference_steps", "got 0"),
    (dict(num_inference_steps=101), "num_inference_steps", "got 101"),
    (dict(task="host_face", lora_alpha=2.5), "lora_alpha", "got 2.5"),
    (dict(task="host_face", lora_alpha=-0.1), "lora_alpha", "got -0.1"),
    (dict(task="science_background", lora_alpha=0.7), "lora_alpha", "science_background"),
    (dict(lora_alpha=0.7), "lora_alpha", "no LoRA"),
    (dict(prompt=""), "prompt", "non-empty"),
    (dict(prompt="   "), "prompt", "non-empty"),
    (dict(prompt="x" * 2001), "prompt", "2001 characters"),
    (dict(guidance_scale=-1.0), "guidance_scale", "got -1.0"),
    (dict(seed=-1), "seed", "got -1"),
    (dict(task="host_face", lora_path="lora/host_person"), "lora_path", "host_face"),
], ids=["width_not_multiple_of_16", "height_not_multiple_of_16", "width_below_minimum", "width_above_maximum",
        "zero_steps", "too_many_steps", "lora_alpha_above_range", "lora_alpha_below_range",
        "lora_alpha_with_no_lora_task", "lora_alpha_without_any_lora", "empty_prompt", "blank_prompt",
        "prompt_too_long", "negative_guidance", "negative_seed", "task_lora_and_lora_path"])
def test_invalid_parameter_raises_invalid_request_naming_it(engine, overrides, param, quoted):
    with pytest.raises(InvalidRequest) as caught:
        engine.generate(request(**overrides))
    assert caught.value.param == param
    assert quoted in caught.value.message


def test_invalid_request_changes_no_adapter_state(engine):
    engine.generate(request(task="host_face"))
    before = (engine.adapters.active, engine.adapters.switches)
    with pytest.raises(InvalidRequest):
        engine.generate(request(task="science_background", width=72))
    assert (engine.adapters.active, engine.adapters.switches) == before
