"""Smoke tests of the CUDA path, run on every device this machine has: the demo model in bf16, compiled.

Why one file for both: the first GPU run must not be the first time this code runs. On CPU (always) the same
tests drive bf16 fused switching and a Dynamo-compiled transformer (``eager`` backend); on CUDA
(``bench/gpu_check.sh``, or any machine with a GPU) they run in bf16 with inductor, as the service does.
``FLUX_TEST_DEVICE`` picks the devices: unset = cpu, plus cuda when available; ``cuda`` = cuda only (and an
error, not an empty run, when there is no GPU); ``cpu`` = cpu only. On a machine without CUDA the CUDA cases
are not collected at all (no skips).

What is checked, per device: strength 0 equals the base model bit for bit; switching LoRAs and strengths
back and forth leaves every transformer weight bit-identical to the start; no compilation after warm-up
across switches; live previews; and on CUDA only, switching with the backup in pinned host memory
(FLUX_FUSED_BACKUP=cpu) stays exact, and a real out-of-memory in the middle of a generation is answered 503
with the JSON envelope while the service keeps serving.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

from tests.conftest import make_settings
from tests.engine_helpers import pixels, request


def _devices() -> list[str]:
    import torch

    wanted = os.environ.get("FLUX_TEST_DEVICE", "")
    cuda = torch.cuda.is_available()
    if wanted == "cuda" and not cuda:
        raise RuntimeError("FLUX_TEST_DEVICE=cuda but torch sees no CUDA GPU")
    if wanted in ("cpu", "cuda"):
        return [wanted]
    return ["cpu"] + (["cuda"] if cuda else [])


DEVICES = _devices()
SIZE = dict(width=32, height=32, num_inference_steps=2)
TASKS = ["host_face", "science_background", "character_face"]


@pytest.fixture(scope="module", params=DEVICES)
def smoke(request, tmp_path_factory):
    """(engine, pristine transformer weights, second LoRA folder): demo model, bf16, compiled and warmed up."""
    from pipelines.engine import FluxEngine
    from tests import lora_builders as build

    device = request.param
    backend = os.environ.get("FLUX_TEST_COMPILE_BACKEND") or ("inductor" if device == "cuda" else "eager")
    settings = make_settings(device=device, dtype="bfloat16", compile="on", compile_backend=backend,
                             compile_warmup_sizes="32x32", max_sequence_length=16,
                             compile_cache_dir=tempfile.mkdtemp(prefix="flux-test-inductor-"))
    engine = FluxEngine.from_settings(settings)
    pristine = {n: p.detach().clone() for n, p in engine.pipe.transformer.named_parameters()}
    engine.warm_up()
    other = build.peft_lora(engine.source.path, tmp_path_factory.mktemp("smoke") / "other", use_rslora=True)
    return engine, pristine, other


def test_runs_on_the_device_in_bf16_compiled(smoke):
    import torch

    engine, _, _ = smoke
    result = engine.generate(request(task="host_face", **SIZE))
    assert result.info.dtype == "bfloat16" and result.info.compiled
    assert next(engine.pipe.transformer.parameters()).dtype == torch.bfloat16
    assert result.info.device == engine.device


def test_strength_zero_equals_the_base_model_bit_for_bit(smoke):
    engine, _, _ = smoke
    base = pixels(engine.generate(request(**SIZE)))
    with_lora = pixels(engine.generate(request(task="host_face", lora_alpha=1.5, **SIZE)))
    off = pixels(engine.generate(request(task="host_face", lora_alpha=0.0, **SIZE)))
    assert np.array_equal(off, base)
    assert not np.array_equal(with_lora, base)  # the LoRA did act


def test_switching_back_and_forth_leaves_no_residue(smoke):
    import torch

    engine, pristine, other = smoke
    first = pixels(engine.generate(request(task="host_face", lora_alpha=0.9, **SIZE)))
    for i in range(6):
        engine.generate(request(task=TASKS[i % 3], lora_alpha=None if i % 3 == 1 else 0.3 + 0.2 * i, **SIZE))
        engine.generate(request(lora_path=str(other), lora_alpha=1.2, **SIZE))
    assert np.array_equal(pixels(engine.generate(request(task="host_face", lora_alpha=0.9, **SIZE))), first)
    engine.adapters.activate_set([])
    for name, param in engine.pipe.transformer.named_parameters():
        assert torch.equal(param, pristine[name]), f"{name} differs from the base model after switching"


def test_no_compilation_across_switches_after_warm_up(smoke):
    engine, _, _ = smoke
    engine.generate(request(task="host_face", **SIZE))
    before, switches = engine.compilations.total, engine.adapters.switches
    for i in range(12):
        engine.generate(request(task=TASKS[i % 3], seed=i, lora_alpha=None if i % 3 == 1 else 0.2 + 0.1 * i, **SIZE))
    assert engine.compilations.total == before
    assert engine.adapters.switches >= switches + 8


def test_live_previews_on_the_device(smoke):
    from pipelines.preview import Preview

    class Recorder:
        def __init__(self) -> None:
            self.shown: list[Preview] = []

        def wants(self, step: int, total: int) -> bool:
            return True

        def show(self, preview: Preview) -> None:
            self.shown.append(preview)

    engine, _, _ = smoke
    recorder = Recorder()
    engine.generate(request(task="host_face", **SIZE), preview=recorder)
    assert [p.step for p in recorder.shown] == [1, 2]
    assert all(p.image.size == (4, 4) for p in recorder.shown)  # 32 px / 8


if "cuda" in DEVICES:
    @pytest.mark.parametrize("smoke", ["cuda"], indirect=True)  # the CUDA engine only
    def test_pinned_host_backup_switches_exactly_on_cuda(smoke):
        """FLUX_FUSED_BACKUP=cpu: the backup in pinned host memory, copied back without blocking the host."""
        import torch
        from diffusers import FluxPipeline

        from pipelines.lora.files import read_lora
        from pipelines.lora.fused_adapters import FusedAdapters

        engine, _, _ = smoke
        pipe = FluxPipeline.from_pretrained(str(engine.source.path), torch_dtype=torch.bfloat16,
                                            local_files_only=True).to("cuda")
        pristine = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
        adapters = FusedAdapters(pipe, backup="cpu")
        adapters.load("demo", read_lora(engine.source.models_root / "lora" / "host_person" /
                                        "pytorch_lora_weights.safetensors"))
        held = adapters.backup_bytes()
        assert held["host"] > 0 and held["device"] == 0
        assert all(b.is_pinned() for b in adapters._backup.values())
        adapters.activate_set([("demo", 0.8)])
        first = {n: p.detach().clone() for n, p in pipe.transformer.named_parameters()}
        assert any(not torch.equal(first[n], pristine[n]) for n in pristine)
        adapters.activate_set([("demo", 1.3)])
        adapters.activate_set([])
        assert all(torch.equal(p, pristine[n]) for n, p in pipe.transformer.named_parameters())
        adapters.activate_set([("demo", 0.8)])
        assert all(torch.equal(p, first[n]) for n, p in pipe.transformer.named_parameters())

    @pytest.mark.parametrize("smoke", ["cuda"], indirect=True)  # the CUDA engine only
    def test_cuda_out_of_memory_is_a_503_and_the_service_keeps_serving(smoke):
        """A real CUDA OOM: almost all free GPU memory is taken, then a request needs more (its VAE decode
        alone needs tens of MiB at 1024x1024)."""
        import torch
        from fastapi.testclient import TestClient

        from app.main import create_app

        engine, _, _ = smoke
        assert engine.device == "cuda"
        body = {"prompt": "a host", "width": 1024, "height": 1024, "num_inference_steps": 1}
        with TestClient(create_app(engine.settings, engine=engine)) as client:
            assert client.post("/api/generate-image", json={**body, "width": 32, "height": 32}).status_code == 200
            torch.cuda.empty_cache()
            free, _ = torch.cuda.mem_get_info()
            filler = torch.empty(max(free - 8 * 2**20, 0), dtype=torch.uint8, device="cuda")
            try:
                r = client.post("/api/generate-image", json=body)
            finally:
                del filler
                torch.cuda.empty_cache()
            assert r.status_code == 503, r.text
            assert r.json()["error"]["type"] == "out_of_memory" and "Retry-After" in r.headers
            assert client.get("/ready").status_code == 200
            assert client.post("/api/generate-image", json=body).status_code == 200
