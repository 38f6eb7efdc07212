"""One live server for the hardening tests (origin and host checks, model path exposure, slow clients).

Why shared: a server start costs seconds (more on a loaded machine), and these settings do not disturb
each other: short header/body timeouts (1 s / 1.5 s) only cut off clients that are slow on purpose, and the
model is a copy of the demo files at an absolute ``FLUX_MODEL_PATH`` inside a user's models folder.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

from tests.http_support import LiveServer, metric, shared_server

HEADER_TIMEOUT_S, BODY_TIMEOUT_S = 1.0, 1.5
ALLOWED_ORIGIN = "http://a.example"
ALLOWED_HOSTS = "studio.example,*.lan.example"
MODEL_LABEL = "checkpoints/my-flux"

_models: list[Path] = []


def user_models_dir() -> Path:
    """A user's models folder made of the demo files: the model at ``checkpoints/my-flux``, the LoRA folder."""
    if not _models:
        from pipelines.demo_model import ensure_demo_model
        from pipelines.settings import Settings

        root = Path(tempfile.mkdtemp(prefix="flux-hardening-"))
        atexit.register(shutil.rmtree, root, True)
        demo = ensure_demo_model(Settings(_env_file=None).demo_cache_dir)
        shutil.copytree(demo / "flux1-dev", root / "models" / MODEL_LABEL)
        shutil.copytree(demo / "lora", root / "models" / "lora")
        _models.append(root / "models")
    return _models[0]


def hardened_server() -> LiveServer:
    models = user_models_dir()
    return shared_server("hardening", FLUX_MODELS_DIR=str(models), FLUX_MODEL_PATH=str(models / MODEL_LABEL),
                         FLUX_CORS_ORIGINS=ALLOWED_ORIGIN, FLUX_ALLOWED_HOSTS=ALLOWED_HOSTS, FLUX_HEADER_TIMEOUT_S=str(HEADER_TIMEOUT_S),
                         FLUX_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S))


def generations(client) -> float:
    """Images generated so far (``/metrics``): a request refused "before any work" leaves it unchanged."""
    return metric(client.get("/metrics").text, "flux_generation_seconds_count")
