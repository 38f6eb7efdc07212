"""Reading LoRA files: find the weights, hash them, hand them to the format reader, check the fit.

Why our own reader in front of diffusers: diffusers reads a folder's ``pytorch_lora_weights.safetensors``
and converts kohya/xlabs/... files, but it does not read PEFT's ``adapter_config.json`` (so ``lora_alpha``,
``use_rslora``, ``use_dora`` and the rank/alpha patterns would be lost and the strength silently wrong), it
mistakes PEFT's ``base_model.model.`` keys for another format, it drops keys it cannot convert with only a
log line, and it only *logs* keys it could not match. Here every LoRA is read once into a
:class:`LoraWeights` (diffusers naming + the configs), and :func:`check_fits` proves that every tensor has
a layer of the right shape in the component it is meant for before anything touches the model.
The contract itself is ``weights.py``; formats are recognised and converted in ``formats.py``; ``lora
inspect`` lives in ``inspect.py``.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from pipelines.errors import AdapterCorrupt, AdapterMismatch, AdapterNotFound
from pipelines.lora.weights import COMPONENT_LABELS, DIFFUSERS_WEIGHTS, LORA_KEY, PEFT_WEIGHTS, LoraWeights

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def resolve_weights_file(path: str | Path) -> Path:
    """A LoRA folder or file -> the one weights file to read. Folders prefer the diffusers layout."""
    p = Path(path)
    if not p.exists():
        raise AdapterNotFound(f"LoRA {p} does not exist (check the path; task LoRA paths are relative to "
                              "the models folder)", path=str(p))
    if p.is_file():
        return p
    for name in (DIFFUSERS_WEIGHTS, PEFT_WEIGHTS):
        if (p / name).is_file():
            return p / name
    candidates = sorted(p.glob("*.safetensors"))
    if len(candidates) == 1:
        return candidates[0]
    listing = ", ".join(sorted(x.name for x in p.iterdir())) or "empty"
    raise AdapterNotFound(
        f"LoRA folder {p} has no {DIFFUSERS_WEIGHTS} or {PEFT_WEIGHTS}"
        + (" and several .safetensors files: name one" if candidates else "")
        + f" (folder holds: {listing})",
        path=str(p),
    )


def read_lora(path: str | Path) -> LoraWeights:
    """Read a LoRA folder or file in any supported format; raise a typed error naming the file otherwise."""
    from pipelines.lora.formats import convert

    weights = resolve_weights_file(path)
    if weights.suffix in _PICKLE_SUFFIXES:
        raise AdapterCorrupt(f"LoRA {weights}: pickle checkpoints are not loaded (they can run code); "
                             "convert it to .safetensors", path=str(weights))
    raw, header, digest, size = read_safetensors(weights)
    if not raw:
        raise AdapterCorrupt(f"LoRA {weights} holds no tensors", path=str(weights))
    lora = convert(weights, raw, header)
    lora.sha256, lora.size_bytes, lora.metadata = digest, size, dict(header)
    return lora


def read_safetensors(weights: Path) -> tuple[dict, dict, str, int]:
    """(tensors, header metadata, sha256 hex, size): the file is read once, hashed from the same bytes."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = weights.read_bytes()
        (n,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + n]).get("__metadata__") or {}
        tensors = load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, struct.error, UnicodeDecodeError) as exc:
        raise AdapterCorrupt(f"LoRA {weights} is not a readable .safetensors file ({exc}); "
                             "the download may be incomplete", path=str(weights)) from None
    return tensors, header, hashlib.sha256(data).hexdigest(), len(data)


def linear_shapes(model) -> dict[str, tuple[int, int]]:
    """Module name -> (in_features, out_features) of every linear layer, seen through PEFT wrappers."""
    import torch

    shapes: dict[str, tuple[int, int]] = {}
    for name, module in model.named_modules():
        if name.endswith(".base_layer"):
            continue
        base = getattr(module, "base_layer", module)
        if isinstance(base, torch.nn.Linear):
            shapes[name] = (base.in_features, base.out_features)
    return shapes


def check_fits(lora: LoraWeights, shapes: dict[str, dict[str, tuple[int, int]]] | dict[str, tuple[int, int]]) -> None:
    """Raise AdapterMismatch unless every tensor of the file lands on a layer of the right shape.

    ``shapes``: component -> :func:`linear_shapes` of it (``{"transformer": ..., "text_encoder": ...}``); a
    plain module -> shape dict means the transformer alone (the older call form).
    """
    from pipelines.lora.formats import foreign_hint

    if shapes and not any(isinstance(v, dict) for v in shapes.values()):
        shapes = {"transformer": shapes}
    unmatched: list[str] = []
    bad_shape: list[str] = []
    for key, tensor in lora.state_dict.items():
        m = LORA_KEY.match(key)
        layers = shapes.get(m.group("component")) if m else None
        if not m or layers is None or m.group("module") not in layers:
            unmatched.append(key)
            continue
        in_f, out_f = layers[m.group("module")]
        which = m.group("which")
        if which == "lora_magnitude_vector":
            if tuple(tensor.shape) != (out_f,):
                bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer out_features {out_f}")
        elif tensor.ndim != 2:
            bad_shape.append(f"{key} {tuple(tensor.shape)}")
        elif which == "lora_A.weight" and tensor.shape[1] != in_f:
            bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer in_features {in_f}")
        elif which == "lora_B.weight" and tensor.shape[0] != out_f:
            bad_shape.append(f"{key} {tuple(tensor.shape)} vs layer out_features {out_f}")
    if not unmatched and not bad_shape:
        return
    parts = []
    if unmatched:
        where = " or ".join(f"the {COMPONENT_LABELS[c]}" for c in shapes) or "the model"
        parts.append(f"{len(unmatched)} of {len(lora.state_dict)} tensors match no layer of {where} of the loaded "
                     f"FLUX model (e.g. {', '.join(unmatched[:3])})")
    if bad_shape:
        parts.append(f"{len(bad_shape)} tensors do not fit their layer's shape (e.g. {', '.join(bad_shape[:2])})")
    hint = foreign_hint(unmatched) or (" (it was probably made for another base model)" if bad_shape else "")
    raise AdapterMismatch(f"LoRA {lora.path}: " + "; ".join(parts) + hint, path=str(lora.path))
