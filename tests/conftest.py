"""Shared fixtures: one real (tiny, demo) FLUX engine per test session.

The demo model is built once into the user cache (as the service does on first use). Tests use small
sizes (64x64, few steps) for speed; ``min_size`` is lowered accordingly in the test settings.

Devices are pinned: every engine, server and subprocess of the suite runs on the CPU in float32, because the
tests compare with bare-diffusers references computed on the CPU in float32 (on a machine with a GPU the
default ``auto`` would pick CUDA + bf16 and every bit-for-bit comparison would fail). ``CPU_ENV`` is set in
this process (so in-process settings and inheriting subprocesses see it) and added to every environment a
test builds without the ``FLUX_*`` variables. The GPU's own tests say their device explicitly
(tests/test_gpu_smoke.py).
"""

from __future__ import annotations

import logging
import os
import tempfile

import pytest

from pipelines.settings import Settings

SMALL = dict(width=64, height=64, num_inference_steps=2)
#: the device and dtype of every CPU reference the tests compare with
CPU = dict(device="cpu", dtype="float32")
CPU_ENV = {"FLUX_DEVICE": "cpu", "FLUX_DTYPE": "float32"}
os.environ.update(CPU_ENV)


def make_settings(**overrides) -> Settings:
    # each app its own job store folder: a shared folder would let one test's service take over another's jobs
    base = dict(min_size=16, model_path=None, tasks_file=None, api_key=None, allow_demo=True, adapters="fused",
                compile="off", data_dir=tempfile.mkdtemp(prefix="flux-test-data-"), **CPU)
    base.update(overrides)
    return Settings(_env_file=None, **base)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def engine(settings):
    from pipelines.engine import FluxEngine

    return FluxEngine.from_settings(settings)


@pytest.fixture(scope="session")
def peft_engine():
    """An engine with the PEFT strategy (FLUX_ADAPTERS=peft), for tests that compare with bare PEFT/diffusers
    bit for bit (the default strategy, fused, is exact against the base model but not against PEFT)."""
    from pipelines.engine import FluxEngine

    return FluxEngine.from_settings(make_settings(adapters="peft"))


@pytest.fixture(scope="session", params=["fused", "peft"])
def each_engine(request, engine, peft_engine):
    """The session engine of each adapter strategy, for behaviour both must share."""
    return engine if request.param == "fused" else peft_engine


@pytest.fixture(scope="session")
def demo_root(engine):
    return engine.source.models_root


@pytest.fixture(scope="session")
def bare_pipe(engine):
    """A plain diffusers.FluxPipeline on the same demo weights, never touched by our code."""
    import torch
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(str(engine.source.path), torch_dtype=torch.float32, local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(autouse=True)
def _quiet_third_party_logs(caplog):
    caplog.set_level(logging.INFO, logger="pipelines")
    yield


@pytest.fixture(scope="module")
def server():
    """The default live uvicorn server (one process shared by the HTTP and jobs test modules)."""
    from tests.http_support import shared_server

    return shared_server()


@pytest.fixture()
def client(server):
    with server.client() as c:
        yield c
