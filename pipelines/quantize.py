"""``FLUX_QUANTIZE=fp8``: refused, with the reason, everywhere in this build.

What it would be (issue 10): torchao's float8 dynamic-activation / float8-weight config with per-row scales on
the transformer's linear layers, with the fused LoRA switch re-quantizing each touched layer from its bf16
backup plus the delta (so switching stays exact with respect to the fp8 base). It was not built: the session
that wrote the fast path had no GPU, and an fp8 path that was never run on one would be a stub that looks
done. So the setting exists only to fail loudly instead of being ignored: on CPU (fp8 matmuls need an
H100-class GPU), without torchao, and, on a GPU with torchao, because it is not implemented yet.
"""

from __future__ import annotations

import importlib.util

from pipelines.errors import ConfigError


def check_quantize(setting: str, device: str) -> None:
    if setting in ("none", "", None):
        return
    if not device.startswith("cuda"):
        raise ConfigError(f"FLUX_QUANTIZE={setting} needs a CUDA GPU (float8 matmuls: H100 or newer); this engine "
                          f"runs on {device}. Unset FLUX_QUANTIZE")
    if importlib.util.find_spec("torchao") is None:
        raise ConfigError(f"FLUX_QUANTIZE={setting} needs torchao (pip install torchao), which is not installed. "
                          "Unset FLUX_QUANTIZE")
    raise ConfigError(f"FLUX_QUANTIZE={setting} is not implemented in this build (fp8 with exact fused LoRA "
                      "switching was not written without a GPU to test it); unset FLUX_QUANTIZE. bf16 + "
                      "FLUX_COMPILE is the fast path")
