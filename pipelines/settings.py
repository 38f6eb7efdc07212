"""The one settings object of the project (engine, HTTP service and CLI read the same one).

Built once from the environment (prefix ``FLUX_``, e.g. ``FLUX_MODEL_PATH=/data/flux1-dev``) or from a
``.env`` file, then passed in: ``ModelManager(settings=...)``, ``create_app(settings)``. Nothing else in
the code reads ``os.environ``. It lives in ``pipelines/`` because that is the bottom of the dependency
chain (``app -> model_manager -> pipelines``), so every layer can import it without importing FastAPI.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from pipelines.errors import ConfigError

ModelType = Literal["flux1", "flux1-schnell"]
ENV_PREFIX = "FLUX_"


def _split_commas(value: object) -> object:
    """``a,b`` (the documented form) or a JSON list ``["a","b"]``; a list passed from Python stays as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"starts with `[` but is not a JSON list ({exc.msg} at character {exc.pos}); "
                             "write `a,b` or `[\"a\",\"b\"]`") from None
    return [part.strip() for part in text.split(",") if part.strip()]


#: A list-valued setting. Why ``NoDecode``: pydantic-settings JSON-decodes every list field it reads from
#: the environment or ``.env`` *before* any validator runs, so the documented ``FLUX_X=a,b`` died with a
#: ``SettingsError``; ``NoDecode`` hands the raw string to ``_split_commas``, which accepts both forms.
#: Every list-valued setting must use this type.
CommaList = Annotated[list[str], NoDecode, BeforeValidator(_split_commas)]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "flux-service"


def _default_data_dir() -> Path:
    """The user's data directory (XDG), never the package folder: job images outlive upgrades and reinstalls."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "flux-service"


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
    compile_warmup_sizes: CommaList = Field(
        default_factory=list, description="WIDTHxHEIGHT sizes compiled before /ready (comma-separated); "
        "empty: every size of the task table.")
    quantize: Literal["none", "fp8"] = Field(
        default="none", description="fp8: refused in this build (see docs/architecture.md).")
    # --- prompt stage (pipelines/prompt/stage.py): glossary, then a local translation model or the dictionary
    glossary_file: Path | None = Field(default=None, description="Prompt glossary; default <models_dir>/glossary.toml.")
    translate: Literal["auto", "glossary", "off"] = Field(
        default="auto", description="Default for a request's `translate`: auto (glossary, then the translation "
                                    "model if there is one, else the dictionary, for what T5 cannot read), glossary "
                                    "(glossary only), off (prompt as typed).")
    translator_path: Path | None = Field(
        default=None, description="Local transformers seq2seq translation folder (e.g. Helsinki-NLP/opus-mt-zh-en). "
                                  "Unset: <models_dir>/translator if present, else none (the dictionary translates).")
    translator_device: Literal["cpu", "engine"] = Field(
        default="cpu", description="cpu (leaves GPU memory to FLUX) or engine (the FLUX device).")
    translator_cache_size: int = Field(default=256, ge=1, description="Translations kept per text (LRU).")
    dictionary: bool = Field(
        default=True, description="The offline dictionary stage (jieba + CC-CEDICT): translates, word by word, the "
                                  "Chinese the glossary leaves when no translation model is there, and keeps glossary "
                                  "terms from matching inside longer words.")
    dictionary_cache_dir: Path = Field(
        default_factory=_default_cache_dir, description="Where the dictionary's compact index is built on first use.")

    # --- HTTP service -------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    cors_origins: CommaList = Field(
        default_factory=list,
        description="Origins (scheme://host[:port]) allowed to call the API from a browser, comma-separated; "
                    "requests from any other Origin are refused with 403. `*`: any origin.")
    allowed_hosts: CommaList = Field(
        default_factory=list,
        description="Host names (besides localhost and IP addresses) the service answers to, comma-separated; "
                    "`*.example.com` for subdomains, `*`: any. Other Host headers get 400 (DNS rebinding).")
    api_key: str | None = Field(default=None, description="When set, /api/* requires `Authorization: Bearer <key>`; "
                                "set but empty is a start-up error.")
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
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="A client must finish sending a request's headers within this (then the "
                                        "connection is closed); also bounds a connection that sends nothing.")
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="A request body must keep arriving: no gap longer than this (from the "
                                        "headers on), else 408; see body_min_bytes_per_s.")
    body_min_bytes_per_s: float = Field(
        default=1024.0, gt=0, description="A request body may take body_timeout_s plus one second per this many "
                                          "bytes received, else 408 (slow-loris protection).")
    max_connections: int = Field(
        default=200, ge=1, description="Open connections served at once; a request on a connection beyond it gets "
                                       "503 + Retry-After.")
    # Ray Serve scale-out (`flux-service serve --ray`, app/ray_serve, docs/deploy.md)
    ray_replicas: int = Field(default=1, ge=1, description="Ray Serve: engine replicas (one GPU each on CUDA).")
    ray_max_loras: int = Field(default=3, ge=1, description="Ray Serve: LoRAs kept resident per replica; the least "
                               "recently used is unloaded beyond it.")
    ray_gpus_per_replica: float = Field(default=1.0, gt=0, le=8, description="Ray Serve on CUDA: GPUs per engine "
                                        "replica; a fraction (0.5) puts several replicas, each a whole model, on one "
                                        "GPU.")
    ray_cpus_per_replica: float = Field(default=1.0, gt=0, description="Ray Serve on CPU: CPUs (and torch threads) "
                                        "per engine replica.")
    trainings_dir: Path = Field(default=Path("data/trainings"),
                                description="Where HTTP-submitted trainings keep their photos and state.")
    max_training_upload_bytes: int = Field(default=512 * 1024 * 1024, ge=1024,
                                           description="Body limit of POST /api/trainings (photos or a zip).")
    training_min_free_gpu_gib: float = Field(default=30.0, ge=0,
                                             description="Free GPU memory a training needs to be admitted.")
    # what one training upload may hold (training/dataset.py): photos are checked one at a time, from their
    # header first, so these bound the memory a check takes (about max_file_bytes + 8 x max_image_pixels bytes)
    training_max_files: int = Field(default=1000, ge=1, description="Files (photos and captions) in one training "
                                    "upload or zip; more is refused with 413.")
    training_max_file_bytes: int = Field(default=100 * 1024**2, ge=1024, description="Bytes of one photo or "
                                         "caption file (in a zip: unpacked); a bigger file is refused unread.")
    training_max_image_pixels: int = Field(default=50_000_000, ge=1, description="Pixels of one photo (width x "
                                           "height, read from its header); a bigger one is refused undecoded.")
    training_max_unpacked_bytes: int = Field(default=2 * 1024**3, ge=1024, description="Bytes one zip of photos "
                                             "may unpack to, counted as they are read; more is refused with 413.")
    log_health_checks: bool = Field(
        default=False, description="Also write /health, /ready and /metrics polls to the access log (app/http/access_log.py)."
    )

    # --- durable jobs (app/jobs/) ---------------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Job database (jobs.sqlite3) and job images; processes on one host may share it.",
    )
    max_jobs_bytes: int = Field(
        default=2 * 1024**3, ge=0, description="Bytes of finished jobs' images kept at most (oldest removed first)."
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        """Names only: a scheme, port or path would never equal a Host header's name, so say so at start-up."""
        out = []
        for host in hosts:
            host = host.strip().lower()
            if host != "*" and not re.fullmatch(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?", host):
                raise ValueError(f"{host!r} is not a host name: write names like studio.example or *.lan.example "
                                 "(no scheme, port or path; IP addresses are always allowed)")
            out.append(host)
        return out

    @field_validator("cors_origins")
    @classmethod
    def _check_origins(cls, origins: list[str]) -> list[str]:
        """Browsers send ``scheme://host[:port]`` with no path; a trailing ``/`` would never match, so drop it."""
        out = []
        for origin in origins:
            origin = origin.strip().rstrip("/")
            if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
                raise ValueError(f"{origin!r} is not an origin: write scheme://host[:port], e.g. http://a.example:8080")
            out.append(origin.lower())
        return out

    @field_validator("api_key")
    @classmethod
    def _no_empty_key(cls, key: str | None) -> str | None:
        """``FLUX_API_KEY=`` looks like "a key is required" but would leave the service open: refuse it."""
        if key is not None and not key.strip():
            raise ValueError("is set but empty, which would leave the API open; set a key, or unset the variable "
                             "to run without one")
        return key

    @field_validator("compile_warmup_sizes")
    @classmethod
    def _check_sizes(cls, sizes: list[str]) -> list[str]:
        for v in sizes:
            w, _, h = v.lower().partition("x")
            if not (w.isdigit() and h.isdigit()):
                raise ValueError(f"sizes are WIDTHxHEIGHT, e.g. 1024x1024; got {v!r}")
        return [v.lower() for v in sizes]

    def warmup_sizes(self) -> list[tuple[int, int]]:
        return [tuple(int(x) for x in v.split("x")) for v in self.compile_warmup_sizes]  # type: ignore[misc]

    def resolved_tasks_file(self) -> Path:
        return self.tasks_file if self.tasks_file is not None else self.models_dir / "tasks.toml"


def load_settings(**overrides) -> Settings:
    """``Settings(**overrides)`` from the environment and ``.env``, with a bad value reported as one
    ``ConfigError`` line naming the variable (``FLUX_PORT: ...``) instead of a pydantic traceback."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError(settings_error_message(exc)) from None
    except SettingsError as exc:
        raise ConfigError(settings_error_message(exc)) from None


def settings_error_message(exc: Exception) -> str:
    """One line per bad setting, named as users write it (``FLUX_X``). Values of secrets are not echoed."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors(include_url=False):
            field = str(err["loc"][0]) if err.get("loc") else ""
            name = ENV_PREFIX + field.upper() if field else "settings"
            got = ""
            if field != "api_key" and "input" in err and isinstance(err["input"], (str, int, float)):
                got = f" (got {err['input']!r})"
            msg = err.get("msg", "invalid value").removeprefix("Value error, ")
            parts.append(f"{name}: {msg}{got}")
        return "invalid setting: " + "; ".join(parts)
    match = re.search(r'field "([^"]+)"', str(exc))
    name = ENV_PREFIX + match.group(1).upper() if match else "a FLUX_* setting"
    return f"invalid setting: {name}: the value does not parse ({exc})"
