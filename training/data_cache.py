"""Turning photos into what the training step consumes, once: VAE latent distributions and text embeddings.

Why cache: encoding a photo with the VAE and a caption with T5-XXL costs more than a LoRA step and never
changes during training, so it is done once up front and the encoders can leave the GPU (diffusers'
``--cache_latents``, ai-toolkit's ``cache_latents_to_disk``). Each photo is cached at every training
resolution, in the aspect-ratio bucket closest to its shape (no face is cut off by a square crop).
"""

from __future__ import annotations

import gc
import io
import math
from dataclasses import dataclass
from typing import Callable, TypeVar

T = TypeVar("T")

#: width/height ratios of the buckets (portrait, landscape and square photos)
ASPECTS = (1.0, 4 / 3, 3 / 4, 3 / 2, 2 / 3, 16 / 9, 9 / 16)


def bucket_size(width: int, height: int, resolution: int) -> tuple[int, int]:
    """The bucket (w, h) for a photo: about resolution^2 pixels, the closest aspect, multiples of 16."""
    ratio = width / height
    best = min(ASPECTS, key=lambda a: abs(math.log(a / ratio)))
    bw = max(16, round(resolution * math.sqrt(best) / 16) * 16)
    bh = max(16, round(resolution / math.sqrt(best) / 16) * 16)
    return bw, bh


def load_pixels(data: bytes, size: tuple[int, int]):
    """Decode, resize to cover ``size`` and centre-crop; a (1, 3, H, W) float tensor in [-1, 1]."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        im = ImageOps.fit(im, size, method=Image.Resampling.LANCZOS)
    arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous()


@dataclass
class LatentItem:
    photo: int  # index into the dataset's photos
    caption: str  # the caption trained with (trigger word included)
    mean: "object"  # VAE latent distribution, (1, 16, h/8, w/8), float32 on the training device
    std: "object"


@dataclass
class TextEmbedding:
    prompt_embeds: "object"
    pooled: "object"
    text_ids: "object"


def caption_for(caption: str, trigger: str) -> str:
    """The trigger word leads every caption (added if the caption does not contain it)."""
    if not caption:
        return trigger
    return caption if trigger.lower() in caption.lower() else f"{trigger}, {caption}"


def encode_latents(pipe, photos, resolutions, trigger: str, device, dtype) -> list[LatentItem]:
    import torch

    vae = pipe.vae
    items: list[LatentItem] = []
    with torch.no_grad():
        for i, photo in enumerate(photos):
            for res in resolutions:
                pixels = load_pixels(photo.data, bucket_size(photo.width, photo.height, res)).to(device, vae.dtype)
                dist = vae.encode(pixels).latent_dist
                items.append(LatentItem(photo=i, caption=caption_for(photo.caption, trigger),
                                        mean=dist.mean.float(), std=dist.std.float()))
    return items


def encode_texts(pipe, texts, device, max_sequence_length: int) -> dict[str, TextEmbedding]:
    import torch

    out: dict[str, TextEmbedding] = {}
    with torch.no_grad():
        for text in texts:
            if text in out:
                continue
            pe, pooled, ids = pipe.encode_prompt(prompt=text, prompt_2=text, device=device,
                                                 num_images_per_prompt=1, max_sequence_length=max_sequence_length)
            out[text] = TextEmbedding(pe, pooled, ids)
    return out


def encode_before_training(pipe, device: str, encode: Callable[[], T]) -> T:
    """Run ``encode`` with the text encoders and the VAE on ``device``, then free the text encoders, and only
    then move the transformer to ``device``.

    Why this order: on FLUX.1-dev the T5-XXL encoder (8.9 GiB in bf16) and the transformer (22.2 GiB) never share
    the GPU: the captions are encoded once, so training needs the transformer, the VAE (for the samples) and the
    LoRA state only. bench/flux_memory.py: 9.3 GiB while encoding, 24.8 GiB while training (plus activations),
    instead of 33.9 GiB with the whole pipeline moved at once. The text encoders are dropped from the pipeline
    (samples are drawn from the cached embeddings), which also returns their host memory.
    """
    import torch

    for name in ("text_encoder", "text_encoder_2", "vae"):
        getattr(pipe, name).to(device)
    result = encode()
    pipe.text_encoder, pipe.text_encoder_2 = None, None
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()
    pipe.transformer.to(device)
    return result
