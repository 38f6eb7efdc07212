"""Live previews: a cheap picture of FLUX's latents while they are being denoised.

Why not the VAE: decoding the real image costs about as much as a denoising step on a GPU (and seconds on
a CPU); a preview every few steps must cost next to nothing. ComfyUI and A1111 ("Approx cheap") use a
fixed linear map from the 16 latent channels to RGB, fitted once against the VAE; we use the same public
FLUX.1 factors (ComfyUI ``comfy/latent_formats.py``, class ``Flux``: 16x3 matrix + bias, output in -1..1).
One matrix product on a tensor 64x smaller than the image, no model weights, no download.

FLUX's pipeline keeps latents *packed*: shape ``(batch, (H/16)*(W/16), 64)``, each token a 2x2 patch of
16 channels. ``latents_to_rgb`` unpacks them to ``(H/8, W/8)`` pixels. The picture is what the latents
look like at that step (noisy early, close to the final image late), at 1/8 of the image size, then
shrunk to at most ``MAX_SIDE`` pixels and sent as a small JPEG data URL (a few KB).

Nothing here is computed unless a caller asks for previews (``Previewer``); the engine passes no latents
to anyone otherwise. No FastAPI here: the HTTP layer turns a preview into a server-sent event.
"""

from __future__ import annotations

import base64
import io
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:  # torch and PIL are imported lazily
    import torch
    from PIL.Image import Image

#: FLUX.1 latent channel -> (R, G, B) weights and the RGB bias: public factors fitted against FLUX's VAE
#: (the ones ComfyUI's Flux latent format ships for its previews). Rows are latent channels 0..15.
FLUX_LATENT_RGB_FACTORS: tuple[tuple[float, float, float], ...] = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_LATENT_RGB_BIAS: tuple[float, float, float] = (-0.0329, -0.0718, -0.0851)
LATENT_CHANNELS = len(FLUX_LATENT_RGB_FACTORS)

#: the preview's longest side in pixels: bounds its size (a 160x160 JPEG is a few KB) whatever the image size
MAX_SIDE = 160
JPEG_QUALITY = 70
#: aim for about this many previews per image (every step for short runs, every few for long ones)
TARGET_PREVIEWS = 10


def every_n_steps(total: int) -> int:
    """Steps between two previews: ~``TARGET_PREVIEWS`` per image, never more often than every step."""
    return max(1, math.ceil(total / TARGET_PREVIEWS))


def latents_to_rgb(latents: "torch.Tensor", height: int, width: int, vae_scale_factor: int = 8) -> "torch.Tensor":
    """Packed FLUX latents (first image of the batch) -> ``(H/8, W/8, 3)`` uint8 RGB via the linear map.

    ``height``/``width`` are the image's pixel size; they fix the packed grid (``H/16`` x ``W/16`` tokens).
    """
    import torch

    rows, cols = int(height) // (vae_scale_factor * 2), int(width) // (vae_scale_factor * 2)
    packed = latents[0].detach()
    if packed.dim() != 2 or packed.shape[0] != rows * cols or packed.shape[1] != LATENT_CHANNELS * 4:
        raise ValueError(f"expected packed FLUX latents of shape ({rows * cols}, {LATENT_CHANNELS * 4}) for a "
                         f"{width}x{height} image, got {tuple(latents.shape)}")
    # token (r, c) holds channels x 2x2 patch in the order (channel, dy, dx), as FluxPipeline packs them
    grid = packed.to(torch.float32).view(rows, cols, LATENT_CHANNELS, 2, 2)
    grid = grid.permute(0, 3, 1, 4, 2).reshape(rows * 2, cols * 2, LATENT_CHANNELS)
    factors = torch.tensor(FLUX_LATENT_RGB_FACTORS, dtype=torch.float32, device=grid.device)
    bias = torch.tensor(FLUX_LATENT_RGB_BIAS, dtype=torch.float32, device=grid.device)
    rgb = grid @ factors + bias  # -1..1
    return ((rgb + 1.0) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu()


def preview_image(latents: "torch.Tensor", height: int, width: int, vae_scale_factor: int = 8) -> "Image":
    """The preview as a PIL image, its longest side at most ``MAX_SIDE`` pixels, aspect ratio kept."""
    from PIL import Image as PILImage

    rgb = latents_to_rgb(latents, height, width, vae_scale_factor).numpy()
    img = PILImage.fromarray(rgb, mode="RGB")
    longest = max(img.size)
    if longest > MAX_SIDE:
        scale = MAX_SIDE / longest
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         PILImage.Resampling.BILINEAR)
    return img


def to_data_url(img: "Image") -> str:
    """``data:image/jpeg;base64,...``: ready for an ``<img src>``; small because the image is small."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@dataclass(frozen=True)
class Preview:
    """One preview: the step it shows and the small picture."""

    step: int
    total: int
    image: "Image"

    def to_dict(self) -> dict:
        return {"step": self.step, "total": self.total, "width": self.image.width, "height": self.image.height,
                "image": to_data_url(self.image)}


class Previewer(Protocol):
    """What the engine asks before it decodes a preview, and whom it hands the preview to.

    ``wants`` is called after every denoising step and must be cheap (a flag and a modulo); only when it
    says yes is the preview computed and ``show`` called, in the engine's thread.
    """

    def wants(self, step: int, total: int) -> bool: ...

    def show(self, preview: Preview) -> None: ...
