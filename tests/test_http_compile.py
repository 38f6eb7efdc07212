"""The service compiles before it is ready: /ready turns 200 only after warm-up, and /metrics counts graphs.

Dynamo with the ``eager`` backend (FLUX_COMPILE_BACKEND=eager) on CPU: the same tracing, guards and counting
as inductor, without its code generation.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.main import create_app
from tests.conftest import make_settings


def test_lifespan_warms_up_every_size_before_ready_and_metrics_count_it():
    settings = make_settings(compile="on", compile_backend="eager", max_sequence_length=16,
                             compile_warmup_sizes="32x32")
    app = create_app(settings)
    with TestClient(app) as client:  # the lifespan (model load + warm-up) has run when this returns
        engine = app.state.engine
        assert client.get("/ready").status_code == 200
        warmed = engine.compilations.total
        assert warmed >= 1
        assert f"flux_compilations_total {float(warmed)}" in client.get("/metrics").text
        r = client.post("/api/generate-image", json={"prompt": "a host", "use_model_manager": True,
                                                     "task": "host_face", "width": 32, "height": 32,
                                                     "num_inference_steps": 1, "lora_alpha": 1.1})
        assert r.status_code == 200
        assert engine.compilations.total == warmed  # the warmed-up size, a LoRA and a new strength: no compile
        assert client.get("/api/loras").json()["compiled"] is True
        assert "flux_eager_images_total 0.0" in client.get("/metrics").text
        # a size not warmed up: answered at once, eagerly, counted; still nothing compiled on the request path
        r = client.post("/api/generate-image", json={"prompt": "a host", "width": 48, "height": 32,
                                                     "num_inference_steps": 1})
        assert r.status_code == 200
        assert engine.compilations.total == warmed
        assert "flux_eager_images_total 1.0" in client.get("/metrics").text
