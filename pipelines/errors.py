"""Typed errors raised by the engine.

Why typed: callers (the HTTP app, the CLI, user scripts) must tell "your request is wrong" from "the LoRA
file is broken" from "the GPU is full" without parsing messages. Each class carries the parameter it is
about (``param``) so the HTTP layer can map it to one status code and one JSON envelope in one place
(``app/errors.py``), the way vLLM maps ``VLLMValidationError``.
"""

from __future__ import annotations


class FluxServiceError(Exception):
    """Base class of every error this project raises on purpose."""

    #: short machine-readable name, used as ``error.type`` in the HTTP envelope
    type: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(FluxServiceError):
    """A parameter is outside what the model or the service accepts."""

    type = "invalid_request"


class UnknownTask(InvalidRequest):
    """The task name is not in the task table; the message lists the valid ones."""

    type = "unknown_task"

    def __init__(self, task: str, valid: list[str]) -> None:
        super().__init__(
            f"unknown task {task!r}; valid tasks: {', '.join(sorted(valid))}", param="task"
        )
        self.task = task
        self.valid = sorted(valid)


class ConfigError(FluxServiceError):
    """The configuration (settings, tasks.toml) is wrong; raised at start-up, never per request."""

    type = "config_error"


class ModelUnavailable(FluxServiceError):
    """The base model cannot be loaded (missing folder, wrong layout, not loaded yet)."""

    type = "model_unavailable"


class AdapterError(FluxServiceError):
    """A LoRA adapter cannot be used. Subclasses say why; every message names the file."""

    type = "adapter_error"

    def __init__(self, message: str, *, path: str | None = None, param: str | None = None) -> None:
        super().__init__(message, param=param)
        self.path = path


class AdapterNotFound(AdapterError):
    type = "adapter_not_found"


class AdapterCorrupt(AdapterError):
    """The file exists but is not a readable LoRA (truncated download, not safetensors, bad config)."""

    type = "adapter_corrupt"


class AdapterMismatch(AdapterError):
    """The LoRA does not fit the loaded model: unmatched keys or shapes (another base model, SDXL...)."""

    type = "adapter_mismatch"


class Cancelled(FluxServiceError):
    """The caller asked to stop (client went away, job deleted, shutdown)."""

    type = "cancelled"


class DeadlineExceeded(FluxServiceError):
    """The request ran past its deadline and was stopped at a denoising step."""

    type = "deadline_exceeded"


class OutOfMemory(FluxServiceError):
    """The accelerator ran out of memory for this request; memory was released and the engine still works."""

    type = "out_of_memory"


class Overloaded(FluxServiceError):
    """The queue is full; try again later."""

    type = "overloaded"
