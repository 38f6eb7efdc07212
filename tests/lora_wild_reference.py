"""The merge a LoRA file asks for, computed from the file alone: the tests' independent reader.

Written from the tools' documented math (the way ComfyUI applies these files), not from the service's loader
(pipelines/lora/), so a test comparing the two can fail: per layer ``W += strength * delta`` with

- LoRA ``lora_up @ lora_down`` (or ``lora_B @ lora_A``) times ``alpha / rank`` (1 without alpha);
- LoKr ``kron(w1, w2)``, a factor given as ``*_a @ *_b``, times ``alpha / rank`` of the decomposed factor (1 when
  both are full); LoHa ``(w1_a @ w1_b) * (w2_a @ w2_b)`` times ``alpha / rank``;
- ``diff`` added to the weight, ``diff_b`` to the bias;

and the layer names of the demo model's layers looked up in a table (tests/lora_wild_builders.py ``BFL_LAYERS``
plus the models' own module names with ``.`` written as ``_``).
"""

from __future__ import annotations

from pathlib import Path

from tests.lora_wild_builders import BFL_LAYERS

_SUFFIXES = ("lora_down.weight", "lora_up.weight", "lora_A.weight", "lora_B.weight", "lokr_w1_a", "lokr_w1_b",
             "lokr_w2_a", "lokr_w2_b", "lokr_w1", "lokr_w2", "hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b",
             "alpha", "diff_b", "diff")


def _layer_delta(p: dict):
    import torch

    f = {k: v.float() for k, v in p.items()}
    alpha = float(f["alpha"]) if "alpha" in f else None
    if "lora_down.weight" in f or "lora_A.weight" in f:
        down = f.get("lora_down.weight", f.get("lora_A.weight"))
        up = f.get("lora_up.weight", f.get("lora_B.weight"))
        return up @ down * (alpha / down.shape[0] if alpha is not None else 1.0)
    if any(k.startswith("lokr_") for k in f):
        w1 = f["lokr_w1"] if "lokr_w1" in f else f["lokr_w1_a"] @ f["lokr_w1_b"]
        w2 = f["lokr_w2"] if "lokr_w2" in f else f["lokr_w2_a"] @ f["lokr_w2_b"]
        rank = f["lokr_w2_b"].shape[0] if "lokr_w2_b" in f else f["lokr_w1_b"].shape[0] if "lokr_w1_b" in f else None
        return torch.kron(w1, w2) * (alpha / rank if rank and alpha is not None else 1.0)
    if "hada_w1_a" in f:
        rank = f["hada_w1_b"].shape[0]
        return (f["hada_w1_a"] @ f["hada_w1_b"]) * (f["hada_w2_a"] @ f["hada_w2_b"]) * \
            (alpha / rank if alpha is not None else 1.0)
    if "diff" in f:
        return f["diff"]
    return None


def _targets(layer: str, transformer_modules: set[str], clip_modules: set[str]):
    """-> (component, [diffusers modules in row order], swap halves) for a layer name as the tools write it."""
    for prefix in ("text_encoders.clip_l.transformer.text_model.", "lora_te1_text_model_"):
        if layer.startswith(prefix):
            rest = layer[len(prefix):]
            flat = {m.replace(".", "_"): m for m in clip_modules}
            return "text_encoder", [rest if rest in clip_modules else flat[rest]], False
    for prefix in ("lycoris_", "lora_transformer_"):
        if layer.startswith(prefix):
            flat = {m.replace(".", "_"): m for m in transformer_modules}
            return "transformer", [flat[layer[len(prefix):]]], False
    for prefix in ("diffusion_model.", "lora_unet_"):
        if layer.startswith(prefix):
            rest = layer[len(prefix):]
            bfl = {k.replace(".", "_"): k for k in BFL_LAYERS}.get(rest, rest)
            return "transformer", list(BFL_LAYERS[bfl]), bfl == "final_layer.adaLN_modulation.1"
    raise KeyError(layer)


def reference_deltas(path: Path, transformer, text_encoder) -> dict[tuple[str, str], object]:
    """(component, parameter name) -> the float32 change at strength 1.0 the file asks for."""
    import torch
    from safetensors.torch import load_file

    layers: dict[str, dict] = {}
    for key, tensor in load_file(str(path)).items():
        suffix = next(s for s in _SUFFIXES if key.endswith("." + s))
        layers.setdefault(key[: -len(suffix) - 1], {})[suffix] = tensor
    models = {"transformer": transformer, "text_encoder": text_encoder}
    linear = {c: {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)} for c, model in models.items()}
    out = {}
    for layer, params in layers.items():
        component, modules, swap = _targets(layer, linear["transformer"], linear["text_encoder"])
        owner = dict(models[component].named_modules())
        for what, delta in (("weight", _layer_delta(params)),
                            ("bias", params["diff_b"].float() if "diff_b" in params else None)):
            if delta is None:
                continue
            if swap:
                half = delta.shape[0] // 2
                delta = torch.cat([delta[half:], delta[:half]])
            row = 0
            for module in modules:
                n = owner[module].out_features
                out[(component, f"{module}.{what}")] = delta[row:row + n]
                row += n
    return out


def dora_delta(weight, up, down, magnitude, scale: float, strength: float):
    """PEFT's DoRA merged weight minus ``weight``: ``m / ||W + s*B@A||_row * (W + s*B@A) - W``."""
    w = weight.float() + strength * scale * (up.float() @ down.float())
    return magnitude.float().unsqueeze(1) / w.norm(dim=1, keepdim=True) * w - weight.float()


class MergedPipe:
    """A bare diffusers pipeline whose weights can be set to ``W0 + strength * delta`` and put back exactly."""

    def __init__(self, pipe):
        self.pipe = pipe
        self._saved: dict = {}

    def _param(self, component: str, name: str):
        return dict(getattr(self.pipe, component).named_parameters())[name]

    def apply(self, deltas: dict, strength: float) -> None:
        import torch

        self.restore()
        with torch.no_grad():
            for (component, name), delta in deltas.items():
                param = self._param(component, name)
                self._saved[(component, name)] = param.detach().clone()
                param.add_(delta.to(param.dtype), alpha=strength)

    def set(self, weights: dict) -> None:
        """Replace parameters outright ((component, name) -> tensor), e.g. a DoRA-merged weight."""
        import torch

        self.restore()
        with torch.no_grad():
            for (component, name), value in weights.items():
                param = self._param(component, name)
                self._saved[(component, name)] = param.detach().clone()
                param.copy_(value.to(param.dtype))

    def restore(self) -> None:
        import torch

        with torch.no_grad():
            for (component, name), value in self._saved.items():
                self._param(component, name).copy_(value)
        self._saved = {}
