"""``torch.compile`` of the transformer, with every compilation counted.

Why compile only the transformer: it is where all denoising steps go (0.184 -> 0.130 s per step on an H100,
shared/ANCHORS.md); the text encoders and the VAE run once per image.

Why it stays compiled: LoRA switching is fused (pipelines/lora/fused_adapters.py), which changes weight *values*
in place and never the module graph, so Dynamo's guards keep holding: task, LoRA and strength changes never
recompile. What does recompile is a new latent shape, i.e. a new image size: ``dynamic=False`` makes that one
compilation per size (a dynamic-shape graph would be slower for every size).

Policy (issue 18): a compile of FLUX.1-dev takes about 2 minutes, so it never happens on a request's path.

- The service (``flux-service serve``, a Ray replica) compiles the sizes it expects before it reports ready
  (``FluxEngine.warm_up``: ``FLUX_COMPILE_WARMUP_SIZES``, default the task table's). Any other size runs the
  same transformer eagerly (``torch.compiler.set_stance("force_eager")`` around that one call: ``eager_for``),
  counted (``flux_eager_images_total``, ``eager_size`` in the result's info) and logged: slower steps, no
  2-minute stall of the single worker, and no graph beyond the warm ones (Dynamo's limit of variants is never
  reached, so it never silently gives up either).
- ``FLUX_COMPILE=auto`` means on for the service on CUDA with fused adapters, off for the CLI and the Python
  API (a one-shot image would pay ~2 minutes of compile against ~5 s eager); ``FLUX_COMPILE=on`` compiles
  there too, each size on its first call, as asked.

How compilations are counted: Dynamo hands each graph it captured to the backend; ``count_backend`` wraps
the configured backend (inductor, or eager/aot_eager for cheap CPU tests) and counts those hand-offs. A
recompile is a hand-off after warm-up; the count is in ``/metrics`` (``flux_compilations_total``) and in
every result's info.

Inductor keeps compiled kernels and FX graphs in ``FLUX_COMPILE_CACHE_DIR`` (set as TORCHINDUCTOR_CACHE_DIR
before the first compile): a restart traces again (seconds) but reuses the compiled code instead of paying
the full compile (minutes on FLUX.1-dev).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pipelines.errors import ConfigError

logger = logging.getLogger(__name__)

#: Dynamo gives up compiling a function (and silently runs it eagerly) after this many variants; one
#: variant per image size, so allow many sizes
_RECOMPILE_LIMIT = 64


class CompileCounter:
    """The number of graphs compiled so far (one per image size, plus one per graph break), and of images a
    compiled engine ran eagerly because their size was not warmed up."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.total = 0
        self.eager_images = 0

    def add(self) -> None:
        with self._lock:
            self.total += 1

    def add_eager(self) -> None:
        with self._lock:
            self.eager_images += 1


def eager_for(run_eagerly: bool):
    """Context manager: the compiled transformer runs eagerly inside it (no compile, no recompile) when
    ``run_eagerly``; otherwise nothing changes."""
    import contextlib

    if not run_eagerly:
        return contextlib.nullcontext()
    import torch

    return torch.compiler.set_stance("force_eager")


def should_compile(setting: str, device: str, adapters: str, *, serving: bool = False) -> bool:
    """``auto``: on for the service (``serving``) on CUDA with fused adapters; off for the CLI and the Python
    API. A PEFT-wrapped model is never compiled by ``auto`` (it did not finish compiling in 270 s on
    FLUX.1-dev, and every strength change recompiles it)."""
    if setting == "off":
        return False
    if setting == "on":
        if adapters == "peft":
            raise ConfigError("FLUX_COMPILE=on needs FLUX_ADAPTERS=fused: PEFT-wrapped layers recompile on every "
                              "strength change (and took over 270 s to compile on FLUX.1-dev)")
        return True
    on = device.startswith("cuda") and adapters == "fused" and serving
    if device.startswith("cuda") and adapters != "fused":
        logger.info("torch.compile stays off with FLUX_ADAPTERS=peft (set FLUX_ADAPTERS=fused to compile)")
    elif device.startswith("cuda") and not serving:
        logger.info("torch.compile stays off outside the service under FLUX_COMPILE=auto (a one-shot image would "
                    "pay minutes of compile); FLUX_COMPILE=on compiles each size on its first call")
    return on


def compile_transformer(transformer, backend: str, cache_dir: Path, counter: CompileCounter) -> None:
    """Compile ``transformer`` in place (``nn.Module.compile``: module names and parameters stay as they are,
    so the adapter strategies still find every layer)."""
    import torch
    import torch._dynamo

    if backend == "inductor":
        cache_dir = Path(cache_dir).expanduser()
        cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir)  # read by inductor when it first caches
    try:
        inner = torch._dynamo.lookup_backend(backend)
    except Exception as exc:  # an unknown name raises InvalidBackend
        raise ConfigError(f"FLUX_COMPILE_BACKEND={backend!r} is not a torch.compile backend ({exc})") from None
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), _RECOMPILE_LIMIT))

    def count_backend(gm, example_inputs):
        counter.add()
        logger.info("torch.compile: compiling a transformer graph (%d so far, backend %s)", counter.total, backend)
        return inner(gm, example_inputs)

    transformer.compile(backend=count_backend, dynamic=False, fullgraph=False)
