"""A run's ``events.jsonl`` (written by the trainer), read incrementally and kept parsed.

Why: every reader used to re-read the whole file: ``GET /api/trainings/{id}`` parsed all of it, and each
event-stream subscriber did so four times a second (30 subscribers: 0.28 of a core, issue 17). Here each
refresh reads only the bytes appended since the last one (a replaced or truncated file is read again from
the start), and what readers ask for (the loss curve, the samples, the last step) is kept up to date as
lines arrive, so a read costs a ``stat`` when nothing changed.
"""

from __future__ import annotations

import json
import math
import os
import threading
from pathlib import Path


def finite(value):
    """``value`` with every NaN or infinity replaced by None: JSON has no NaN (a diverging training's loss
    is NaN), and a client's JSON parser refuses the ``NaN`` that Python writes by default."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


class EventLog:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.events: list[dict] = []
        self.losses: dict[int, float] = {}  # step -> loss (a resumed run repeats the steps after its checkpoint)
        self.samples: list[dict] = []
        self.last_step: dict | None = None
        self._offset = 0
        self._inode: int | None = None
        self._lock = threading.Lock()

    def refresh(self) -> int:
        """Read what was appended (whole lines only); return the number of events now known."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except OSError:
                return len(self.events)
            if st.st_ino != self._inode or st.st_size < self._offset:
                self._reset(st.st_ino)
            if st.st_size == self._offset:
                return len(self.events)
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read(st.st_size - self._offset)
            end = data.rfind(b"\n") + 1
            self._offset += end
            for line in data[:end].splitlines():
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(event, dict):
                    self._add(finite(event))
            return len(self.events)

    def since(self, index: int) -> list[dict]:
        with self._lock:
            return self.events[index:]

    def _reset(self, inode: int) -> None:
        self.events, self.losses, self.samples, self.last_step = [], {}, [], None
        self._offset, self._inode = 0, inode

    def _add(self, event: dict) -> None:
        self.events.append(event)
        kind = event.get("type")
        if kind == "step" and isinstance(event.get("step"), int):
            self.losses[event["step"]] = event.get("loss")
            self.last_step = event
        elif kind == "sample":
            self.samples.append(event)
