"""A finished job read back from its row: what ``GET /api/jobs/{id}`` and the image route see of it.

Why its own class: a finished job costs no memory (its PNG is a file, its record a row); this read-only face
has just what the routes use of a ``Job``.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import fields

from pipelines.types import GenerationInfo


class StoredJob:
    """A finished job read back from its row: the read-only face of ``Job`` that the routes use."""

    kind = "job"
    done = True
    stop_reason = None
    suspended = None

    def __init__(self, row: sqlite3.Row) -> None:
        self.id: str = row["id"]
        self.status: str = row["status"]
        self.created_at: float = row["created_at"]
        self.started_at: float | None = row["started_at"]
        self.finished_at: float | None = row["finished_at"]
        self.image_sha256: str | None = row["image_sha256"]
        self._record: dict = json.loads(row["record"])
        self.info = _info_from(self._record.get("info"))
        self.replica: str | None = self._record.get("replica")  # X-Replica of the image route

    def to_dict(self) -> dict:
        return dict(self._record)

    def snapshot(self) -> tuple[dict, int]:
        return self.to_dict(), 0

    def events_since(self, index: int) -> list:
        return []

    async def wait_done(self, timeout: float | None) -> bool:
        return True


def _info_from(data: dict | None) -> GenerationInfo | None:
    """Tolerant of rows written by an older or newer version (fields added or removed since)."""
    if data is None:
        return None
    known = {f.name for f in fields(GenerationInfo)}
    values = {name: data.get(name) for name in known}
    values["warnings"] = values["warnings"] or []
    values["timings"] = values["timings"] or {}
    return GenerationInfo(**values)
