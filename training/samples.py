"""Sample images: the same prompts and seeds before training and at every checkpoint, side by side.

Why the same seeds: a row then differs from the one above only by what the LoRA learned, which is how a
user sees when training starts to overfit (ai-toolkit and Replicate's trainer show the same grid).
"""

from __future__ import annotations

import re
from pathlib import Path

_ROW = re.compile(r"^step-(\d+)\.png$")


def write_sample_row(folder: Path, step: int, images) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    w, h = images[0].width, images[0].height
    row = Image.new("RGB", (w * len(images), h), "white")
    for i, im in enumerate(images):
        row.paste(im.convert("RGB"), (i * w, 0))
    path = folder / f"step-{step:06d}.png"
    row.save(path)
    return path


def write_sample_sheet(folder: Path, sheet_path: Path, prompts: list[str], seeds: list[int]) -> Path:
    """Every row so far (one per checkpoint, step 0 = before training) under a header naming each column."""
    from PIL import Image, ImageDraw

    rows = sorted((int(m.group(1)), p) for p in folder.glob("step-*.png") if (m := _ROW.match(p.name)))
    images = [(s, Image.open(p).convert("RGB")) for s, p in rows]
    label_w, header_h, pad = 96, 28, 4
    cell_w = max(im.width for _, im in images) // max(len(prompts), 1)
    width = label_w + max(im.width for _, im in images) + pad
    height = header_h + sum(im.height + pad for _, im in images)
    sheet = Image.new("RGB", (max(width, label_w + 160), height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (prompt, seed) in enumerate(zip(prompts, seeds)):
        draw.text((label_w + i * cell_w + 2, 2), f"seed {seed}", fill="black")
        draw.text((label_w + i * cell_w + 2, 14), prompt[:24], fill="gray")
    y = header_h
    for step, im in images:
        draw.text((4, y + 4), "before" if step == 0 else f"step {step}", fill="black")
        sheet.paste(im, (label_w, y))
        y += im.height + pad
    tmp = sheet_path.with_name(sheet_path.name + ".tmp.png")
    sheet.save(tmp)
    tmp.replace(sheet_path)
    return sheet_path
