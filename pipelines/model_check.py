"""Cheap checks of a diffusers FLUX folder before loading it, so a damaged download names the wrong file.

Why: a truncated or half-downloaded folder used to fail deep inside ``from_pretrained`` with a message about
tensors (or, worse, load and serve). Real model folders are the user's (tens of GB), so we check only what
is cheap and never write there:

* ``model_index.json`` parses, is a ``FluxPipeline``, and every component it names has its folder;
* every ``*.json`` in a component folder parses (configs, tokenizers, weight indexes);
* every shard a ``*.safetensors.index.json`` names exists;
* every ``*.safetensors`` header parses and describes exactly the file's size (catches truncation and
  garbage; it cannot catch flipped bytes inside the tensor data: only a known hash could, which is what the
  demo model's manifest does for the cache we build ourselves);
* a model component (one with ``config.json``) holds at least one weights file.

Each failure is a ``ModelUnavailable`` naming the file, what is wrong with it, and the fix (``hint``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.errors import ModelUnavailable

#: a safetensors header larger than this is garbage, not a header (real FLUX headers are < 1 MB)
MAX_HEADER_BYTES = 100 * 2**20


def check_model_folder(folder: Path, hint: str) -> None:
    folder = Path(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelUnavailable(f"{folder} is not a diffusers pipeline folder (no model_index.json): {hint}")
    spec = _read_json(index, hint)
    if not isinstance(spec, dict):
        raise ModelUnavailable(f"{index} is not a JSON object: {hint}")
    cls = spec.get("_class_name")
    if cls != "FluxPipeline":
        raise ModelUnavailable(f"{folder} holds a {cls}, not a FluxPipeline (FLUX.1-dev/schnell layout expected)")
    for name, value in sorted(spec.items()):
        if name.startswith("_") or not (isinstance(value, list) and len(value) == 2 and value[0]):
            continue  # metadata, or a component the pipeline does without (e.g. image_encoder: [null, null])
        component = folder / name
        if not component.is_dir():
            raise ModelUnavailable(f"{component} is missing (model_index.json names the component {name!r}, "
                                   f"a {value[1]}): {hint}")
        _check_component(component, hint)


def _check_component(component: Path, hint: str) -> None:
    for path in sorted(component.glob("*.json")):
        data = _read_json(path, hint)
        if path.name.endswith(".safetensors.index.json"):
            shards = sorted(set((data.get("weight_map") or {}).values())) if isinstance(data, dict) else []
            for shard in shards:
                if not (component / shard).is_file():
                    raise ModelUnavailable(f"{component / shard} is missing ({path.name} lists it): {hint}")
    weights = sorted(component.glob("*.safetensors"))
    for path in weights:
        check_safetensors(path, hint)
    if (component / "config.json").is_file() and not weights and not any(component.glob("*.bin")):
        raise ModelUnavailable(f"{component} has a config.json but no weights file (*.safetensors): {hint}")


def check_safetensors(path: Path, hint: str) -> None:
    """The 8-byte length, the JSON header, and the size it implies; reads only the header."""
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ModelUnavailable(f"{path} is truncated ({size} bytes, not even a safetensors header): {hint}")
        n = int.from_bytes(head, "little")
        if n > min(size - 8, MAX_HEADER_BYTES):
            raise ModelUnavailable(f"{path} is not a valid safetensors file (header length {n} for a file of "
                                   f"{size} bytes): truncated or overwritten; {hint}")
        try:
            header = json.loads(f.read(n))
            end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ModelUnavailable(f"{path}: the safetensors header does not parse (overwritten or not a "
                                   f"safetensors file): {hint}") from None
    if 8 + n + end != size:
        raise ModelUnavailable(f"{path} has {size} bytes but its header describes {8 + n + end}: "
                               f"{'truncated (incomplete download?)' if size < 8 + n + end else 'extra bytes'}; "
                               f"{hint}")


def _read_json(path: Path, hint: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelUnavailable(f"{path} is not valid JSON ({exc}): {hint}") from None
