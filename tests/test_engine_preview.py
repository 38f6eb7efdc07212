"""Live previews: FLUX latents shown cheaply every few steps, only when someone asks (pipelines/preview.py)."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from pipelines.preview import (
    FLUX_LATENT_RGB_BIAS,
    FLUX_LATENT_RGB_FACTORS,
    MAX_SIDE,
    Preview,
    every_n_steps,
    latents_to_rgb,
    preview_image,
)
from tests.engine_helpers import pixels, request


class Recorder:
    """A previewer that asks for every ``n``-th step and keeps what it is shown."""

    def __init__(self, n: int = 1, on: bool = True) -> None:
        self.n, self.on = n, on
        self.asked: list[int] = []
        self.shown: list[Preview] = []

    def wants(self, step: int, total: int) -> bool:
        self.asked.append(step)
        return self.on and step % self.n == 0

    def show(self, preview: Preview) -> None:
        self.shown.append(preview)


def test_unpacking_matches_diffusers_own_unpack_then_the_linear_map():
    import torch
    from diffusers import FluxPipeline

    height, width = 64, 96
    packed = torch.randn(1, (height // 16) * (width // 16), 64, generator=torch.Generator().manual_seed(0))
    unpacked = FluxPipeline._unpack_latents(packed, height, width, 8)[0]  # (16, H/8, W/8)
    factors = torch.tensor(FLUX_LATENT_RGB_FACTORS)
    expected = torch.einsum("chw,cr->hwr", unpacked, factors) + torch.tensor(FLUX_LATENT_RGB_BIAS)
    expected = ((expected + 1) * 127.5).clamp(0, 255).round().to(torch.uint8)
    got = latents_to_rgb(packed, height, width)
    assert got.shape == (height // 8, width // 8, 3)
    assert torch.equal(got, expected)


def test_preview_of_a_large_image_is_bounded_and_keeps_its_aspect_ratio():
    import torch

    packed = torch.randn(1, (2048 // 16) * (1024 // 16), 64)
    img = preview_image(packed, 1024, 2048)
    assert img.size == (MAX_SIDE, MAX_SIDE // 2)
    url = Preview(4, 28, img).to_dict()["image"]
    assert url.startswith("data:image/jpeg;base64,")
    assert len(url) < 16_000, "a preview must stay a few KB"


def test_wrong_latent_shape_is_a_clear_error():
    import torch

    with pytest.raises(ValueError, match="packed FLUX latents"):
        latents_to_rgb(torch.zeros(1, 10, 64), 64, 64)


def test_every_n_steps_gives_about_ten_previews():
    assert every_n_steps(1) == 1 and every_n_steps(4) == 1 and every_n_steps(10) == 1
    assert every_n_steps(28) == 3 and every_n_steps(50) == 5


def test_engine_shows_previews_on_the_steps_asked_for_without_changing_the_image(engine):
    rec = Recorder(n=2)
    with_previews = engine.generate(request(width=128, height=64, num_inference_steps=4), preview=rec)
    without = engine.generate(request(width=128, height=64, num_inference_steps=4))
    assert rec.asked == [1, 2, 3, 4]
    assert [(p.step, p.total) for p in rec.shown] == [(2, 4), (4, 4)]
    assert all(p.image.size == (16, 8) for p in rec.shown)  # 1/8 of the image size
    assert np.array_equal(pixels(with_previews), pixels(without))
    # each preview is the latents at its step, sent as a decodable JPEG; the two steps differ
    from PIL import Image

    data = base64.b64decode(rec.shown[0].to_dict()["image"].split(",", 1)[1])
    assert Image.open(io.BytesIO(data)).size == (16, 8)
    assert not np.array_equal(np.asarray(rec.shown[0].image), np.asarray(rec.shown[1].image))


def test_no_preview_is_computed_when_the_previewer_declines(engine, monkeypatch):
    import pipelines.engine as engine_module

    calls = []
    monkeypatch.setattr(engine_module, "preview_image", lambda *a, **k: calls.append(a))
    rec = Recorder(on=False)
    engine.generate(request(), preview=rec)
    assert rec.asked == [1, 2] and rec.shown == [] and calls == []


def test_a_failing_preview_is_logged_and_never_costs_the_image(engine, monkeypatch, caplog):
    import pipelines.engine as engine_module

    def broken(*_a, **_k):
        raise RuntimeError("boom")

    monkeypatch.setattr(engine_module, "preview_image", broken)
    rec = Recorder()
    result = engine.generate(request(num_inference_steps=3), preview=rec)
    assert result.image.size == (64, 64)
    assert rec.shown == [] and rec.asked == [1], "after one failure no more previews are tried for the image"
    assert "live preview failed at step 1" in caplog.text
