"""Typed errors of the trainer, in the style of ``pipelines/errors.py`` (so ``app/errors.py`` maps them).

Why a list of problems on ``DatasetError``: a user who drops 25 photos wants to hear about *every* bad file
at once (which one, and why), not fix them one upload at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.errors import InvalidRequest


@dataclass(frozen=True)
class DatasetProblem:
    file: str  # path relative to the dataset root (or the zip)
    reason: str  # unreadable | not_an_image | too_small | too_large | duplicate | caption_without_image | bad_caption
    detail: str

    def __str__(self) -> str:
        return f"{self.file}: {self.detail}"

    def to_dict(self) -> dict:
        return {"file": self.file, "reason": self.reason, "detail": self.detail}


class DatasetError(InvalidRequest):
    """The photos cannot be trained on: every problem is listed by file name (HTTP 422, param ``photos``)."""

    type = "invalid_dataset"

    def __init__(self, message: str, problems: list[DatasetProblem] | None = None) -> None:
        self.problems = list(problems or [])
        if self.problems:
            message += "; " + "; ".join(str(p) for p in self.problems)
        super().__init__(message, param="photos")


class DatasetTooLarge(DatasetError):
    """More files or unpacked bytes than the limits allow (HTTP 413, param ``photos``): refused as soon as the
    count or the running total passes the limit, before the rest is read."""

    type = "dataset_too_large"


class TrainingConfigError(InvalidRequest):
    """An option is out of range or contradicts the output folder's state (exists, resume mismatch)."""

    type = "invalid_training_config"


class NameTaken(TrainingConfigError):
    """The LoRA name or task already exists (HTTP 409); pick another or ask to overwrite."""

    type = "name_taken"


class RunNotFound(InvalidRequest):
    """No training with that id (HTTP 404), or no such file in its output."""

    type = "not_found"
