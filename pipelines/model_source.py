"""Where the base model comes from (a real folder or the embedded demo), and loading it onto a device.

Why in one place: "which model is serving" must never be a surprise. A configured path that does not
exist is an error that says how to get the weights; the demo model is used only when nothing is configured
and ``models/flux1-dev`` is absent, and then it is announced with a warning log line.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from pipelines.demo_model import ensure_demo_model
from pipelines.errors import ModelUnavailable
from pipelines.model_check import check_model_folder
from pipelines.settings import Settings

logger = logging.getLogger(__name__)

#: model_type -> (default folder under models/, Hugging Face repo, default steps, default guidance)
MODEL_TYPES = {
    "flux1": ("flux1-dev", "black-forest-labs/FLUX.1-dev", 28, 3.5),
    "flux1-schnell": ("flux1-schnell", "black-forest-labs/FLUX.1-schnell", 4, 0.0),
}


@dataclass(frozen=True)
class ModelSource:
    path: Path  # the diffusers pipeline folder
    models_root: Path  # what task LoRA paths are relative to
    demo: bool
    model_type: str

    @property
    def label(self) -> str:
        """The model as clients see it (``/api/tasks``, job info, PNG metadata): ``demo``, the folder relative
        to the models folder (``flux1-dev``), or only the folder's name when it lies outside. Never an absolute
        path: it tells a client where the server keeps its files (and often the user name). Logs show the path."""
        if self.demo:
            return "demo"
        try:
            rel = self.path.resolve().relative_to(self.models_root.resolve()).as_posix()
        except (ValueError, OSError):
            rel = ""
        return rel if rel not in ("", ".") else self.path.resolve().name


def download_hint(model_type: str, path: Path | str) -> str:
    _, repo, _, _ = MODEL_TYPES[model_type]
    return (f"download the weights with `huggingface-cli download {repo} --local-dir {path}` "
            f"(accept the licence on the model page first), or set FLUX_MODEL_PATH to an existing folder")


def repair_hint(source: ModelSource) -> str:
    """How to fix a damaged model folder: ours (the demo cache) is rebuilt; the user's is downloaded again."""
    if source.demo:
        return (f"the embedded demo model cache {source.models_root} is damaged; delete that folder and start "
                "again: it is rebuilt in seconds (nothing is downloaded)")
    return download_hint(source.model_type, source.path)


def resolve_model_source(settings: Settings, model_path: Path | str | None = None,
                         *, default_path_means_demo: bool = False) -> ModelSource:
    """Decide which model serves. ``model_path`` (Python API) overrides ``settings.model_path``."""
    folder, _, _, _ = MODEL_TYPES[settings.model_type]
    default = settings.models_dir / folder
    explicit = Path(model_path) if model_path is not None else settings.model_path
    if explicit is not None and not (default_path_means_demo and Path(explicit) == default and not default.exists()):
        if not Path(explicit).is_dir():
            raise ModelUnavailable(f"model folder {explicit} does not exist: {download_hint(settings.model_type, explicit)}",
                                   param="model_path")
        return ModelSource(Path(explicit), settings.models_dir, False, settings.model_type)
    if default.is_dir():
        return ModelSource(default, settings.models_dir, False, settings.model_type)
    if not settings.allow_demo:
        raise ModelUnavailable(f"no model configured and {default} is absent (demo model disabled by "
                               f"FLUX_ALLOW_DEMO=false): {download_hint(settings.model_type, default)}")
    root = ensure_demo_model(settings.demo_cache_dir)
    logger.warning("DEMO MODEL: no FLUX weights configured and %s is absent; serving the embedded demo model "
                   "(random weights, noise-like pictures) from %s. For real images: %s",
                   default, root, download_hint(settings.model_type, default))
    return ModelSource(root / "flux1-dev", root, True, settings.model_type)


def pick_device(settings: Settings) -> tuple[str, "object"]:
    """auto: CUDA + bfloat16 when a GPU is there, else CPU + float32; both overridable."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelUnavailable(f"device {device!r} requested but CUDA is not available", param="device")
    dtype_name = settings.dtype
    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
    return device, getattr(torch, dtype_name)


def load_pipeline(source: ModelSource, device: str, dtype):
    """``diffusers.FluxPipeline.from_pretrained`` from a local folder; never reaches a hub."""
    from diffusers import FluxPipeline

    check_model_folder(source.path, repair_hint(source))  # names a missing/truncated file before diffusers does
    try:
        pipe = FluxPipeline.from_pretrained(str(source.path), torch_dtype=dtype, local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ModelUnavailable(f"could not load FLUX from {source.path}: {exc}") from None
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
