"""The one settings object of the project (engine, HTTP service and CLI read the same one).

Built once from the environment (prefix ``FLUX_``, e.g. ``FLUX_MODEL_PATH=/data/flux1-dev``) or from a
``.env`` file, then passed in: ``ModelManager(settings=...)``, ``create_app(settings)``. Nothing else in
the code reads ``os.environ``. It lives in ``pipelines/`` because that is the bottom of the dependency
chain (``app -> model_manager -> pipelines``), so every layer can import it without importing FastAPI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ModelType = Literal["flux1", "flux1-schnell"]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flux-service"


class Settings(BaseSettings):
    """Every knob, with the default a fresh checkout runs with."""

    model_config = SettingsConfigDict(env_prefix="FLUX_", env_file=".env", extra="ignore")

    # --- engine -------------------------------------------------------------------------------------
    model_path: Path | None = Field(
        default=None,
        description="Local diffusers-format FLUX folder. Unset: models/flux1-dev if present, else the demo model.",
    )
    model_type: ModelType = Field(default="flux1", description="flux1 (dev: 28 steps, guidance 3.5) or flux1-schnell.")
    models_dir: Path = Field(default=Path("models"), description="Root that task LoRA paths are relative to.")
    tasks_file: Path | None = Field(default=None, description="Task table; default <models_dir>/tasks.toml.")
    device: str = Field(default="auto", description="auto (cuda when available, else cpu), cpu, cuda, cuda:1 ...")
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = Field(
        default="auto", description="auto: bfloat16 on CUDA, float32 on CPU."
    )
    allow_demo: bool = Field(
        default=True, description="Serve the embedded demo model when no real model is configured."
    )
    demo_cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Where the demo model is built on first use."
    )
    max_sequence_length: int = Field(default=512, ge=1, le=512, description="T5 tokens kept from the prompt.")

    # --- fast path (issue 10): LoRA strategy, torch.compile, quantization -----------------------------
    adapters: Literal["fused", "peft"] = Field(
        default="fused", description="fused: LoRA merged into the weights with an exact restore from a backup "
        "(no per-step cost, compile-friendly); peft: unfused PEFT layers (needed for DoRA).")
    fused_backup: Literal["auto", "device", "cpu"] = Field(
        default="auto", description="Where the fused strategy keeps its copy of the original weights: device "
        "(fast restores, costs GPU memory), cpu (pinned host memory, restores cross PCIe), auto (device while "
        "a quarter of GPU memory stays free).")
    compile: Literal["auto", "on", "off"] = Field(
        default="auto", description="torch.compile the transformer; auto: on for CUDA with fused adapters.")
    compile_backend: str = Field(
        default="inductor", description="torch.compile backend; eager/aot_eager count Dynamo compilations "
        "without inductor's cost (tests on CPU).")
    compile_cache_dir: Path = Field(
        default_factory=lambda: _default_cache_dir() / "inductor",
        description="Inductor's cache (TORCHINDUCTOR_CACHE_DIR): a restart reuses compiled kernels.")
    compile_warmup_sizes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="WIDTHxHEIGHT sizes compiled before /ready (comma-separated); "
        "empty: every size of the task table.")
    quantize: Literal["none", "fp8"] = Field(
        default="none", description="fp8: refused in this build (see docs/architecture.md).")

    # --- HTTP service -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: list[str] = Field(default_factory=list, description="Origins allowed to call the API from a browser.")
    api_key: str | None = Field(default=None, description="When set, /api/* requires `Authorization: Bearer <key>`.")
    queue_size: int = Field(default=16, ge=1, description="Requests waiting for the GPU before 503.")
    request_timeout_s: float = Field(default=300.0, gt=0, description="Deadline per request, queue wait included.")
    min_size: int = Field(default=256, ge=16)
    max_size: int = Field(default=2048, ge=16)
    max_steps: int = Field(default=100, ge=1)
    max_prompt_chars: int = Field(default=2000, ge=1)
    max_body_bytes: int = Field(default=64 * 1024, ge=1024)
    shutdown_grace_s: float = Field(default=30.0, ge=0, description="How long SIGTERM waits for running work.")
    job_ttl_s: float = Field(default=3600.0, gt=0, description="How long finished jobs are kept.")
    max_jobs_kept: int = Field(default=100, ge=1, description="How many finished jobs are kept at most.")
    enable_test_hooks: bool = Field(default=False, description="Test-only fault injection; never in production.")

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @field_validator("compile_warmup_sizes", mode="before")
    @classmethod
    def _split_sizes(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip().startswith("["):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            for v in value:
                w, _, h = str(v).lower().partition("x")
                if not (w.isdigit() and h.isdigit()):
                    raise ValueError(f"sizes are WIDTHxHEIGHT, e.g. 1024x1024; got {v!r}")
            return [str(v).lower() for v in value]
        return value

    def warmup_sizes(self) -> list[tuple[int, int]]:
        return [tuple(int(x) for x in v.split("x")) for v in self.compile_warmup_sizes]  # type: ignore[misc]

    def resolved_tasks_file(self) -> Path:
        return self.tasks_file if self.tasks_file is not None else self.models_dir / "tasks.toml"
