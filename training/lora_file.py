"""Writing the trained LoRA: diffusers layout plus our provenance in the safetensors header.

Why not ``FluxPipeline.save_lora_weights`` itself: it writes exactly this layout (``transformer.<module>
.lora_A.weight`` keys, the LoRA config as ``lora_adapter_metadata``) but has no place for our own metadata
(base model, steps, trigger word, dataset hash), which ``lora inspect`` and the task table read back. The
bytes are deterministic: tensors in sorted key order, metadata with sorted keys, no timestamps. The
file is framed here (8-byte header length, JSON header, raw little-endian data, as the safetensors format
specifies) because ``safetensors.save_file`` keeps the metadata in a hash map whose order changes from
one process to the next, so two identical trainings gave files that differed in the header.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"


def lora_state_dict(transformer) -> dict:
    """The adapter's tensors in diffusers naming (``transformer.`` prefix, no adapter name), on the CPU."""
    from peft.utils import get_peft_model_state_dict

    sd = get_peft_model_state_dict(transformer)
    return {f"transformer.{k}": v.detach().to("cpu").contiguous().clone() for k, v in sorted(sd.items())}


def adapter_metadata(rank: int, alpha: float, target_modules: list[str]) -> dict:
    """The LoraConfig fields diffusers' loader reads from ``lora_adapter_metadata`` (alpha != rank works)."""
    return {"r": rank, "lora_alpha": alpha, "target_modules": sorted(target_modules), "lora_dropout": 0.0,
            "bias": "none", "use_dora": False, "use_rslora": False}


def save_lora(path: Path, state_dict: dict, lora_config: dict, provenance: dict) -> Path:
    """Write atomically (temp file + rename), so a reader never sees half a file."""
    metadata = {"format": "pt",
                "lora_adapter_metadata": json.dumps({f"transformer.{k}": v for k, v in lora_config.items()},
                                                    indent=2, sort_keys=True)}
    metadata.update({k: str(v) for k, v in sorted(provenance.items())})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(safetensors_bytes(state_dict, metadata))
    os.replace(tmp, path)
    return path


def safetensors_bytes(state_dict: dict, metadata: dict[str, str]) -> bytes:
    """A safetensors file with a canonical header: keys sorted, no whitespace, padded to 8 bytes."""
    import torch

    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    header: dict = {"__metadata__": dict(sorted(metadata.items()))}
    chunks, offset = [], 0
    for key in sorted(state_dict):
        t = state_dict[key].detach().to("cpu").contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[key] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    return len(head).to_bytes(8, "little") + head + b"".join(chunks)
