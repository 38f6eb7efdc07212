"""Training events for ``GET /api/trainings/{id}/events``: one reader per followed run, fanned out.

Why (issue 17): each subscriber polled the run's files four times a second, and each poll parsed the
whole ``events.jsonl`` again (30 subscribers: 0.28 of a core). Now a run that has subscribers has one
poller: every 0.25 s it looks at ``run.json`` (parsed only when it changed) and reads what the trainer
appended (``training/event_log.py``); subscribers wait on it and replay the same list from their own
position, so a late subscriber still gets every event from the start. The poller stops when the run
ends or its last subscriber leaves.
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator

logger = logging.getLogger(__name__)

TERMINAL = ("succeeded", "failed", "cancelled")
#: the trainer's events that are forwarded to clients (the rest is bookkeeping: done, error)
FORWARDED = ("step", "sample", "checkpoint", "resumed", "phase", "dataset", "task")
KEEP_ALIVE = ("", {})  # yielded after 15 s without an event: the route sends an SSE comment


class _Feed:
    def __init__(self, runs, run_id: str, interval: float) -> None:
        self.runs, self.run_id, self.interval = runs, run_id, interval
        self.events: list[tuple[str, dict]] = []
        self.final: tuple[str, dict] | None = None
        self.subscribers = 0
        self.reads = 0  # polls of the run's files (tests check there is one reader, not one per subscriber)
        self._seen = 0
        self._changed = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        try:
            while self.final is None:
                done = await asyncio.to_thread(self._read)
                if done is not None:
                    self.final = done
                self._notify()
                if self.final is None:
                    await asyncio.sleep(self.interval)
        finally:
            self._notify()  # also when reading failed (the run's folder went away): subscribers end

    def _read(self) -> tuple[str, dict] | None:
        """New events since the last read; the final event once the run has ended (status first, so every
        event the trainer wrote before it exited is already in the file)."""
        self.reads += 1
        status = self.runs.status(self.run_id)
        log = self.runs.log(self.run_id)
        for e in log.since(self._seen):
            kind = e.get("type", "event")
            if kind == "sample":
                e = {**e, "url": f"/api/trainings/{self.run_id}/files/{e.get('file')}"}
            if kind in FORWARDED:
                self.events.append((kind, e))
        self._seen = len(log.events)
        if status in TERMINAL:
            run = self.runs.get(self.run_id)
            return run["status"], run
        return None

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def changed(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._changed.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


class TrainingFeeds:
    def __init__(self, runs, interval: float = 0.25) -> None:
        self.runs, self.interval = runs, interval
        self.feeds: dict[str, _Feed] = {}

    async def follow(self, run_id: str, keep_alive_s: float = 15.0) -> AsyncIterator[tuple[str, dict]]:
        """(event, data) of the run from its start, then its final state; ``KEEP_ALIVE`` when idle."""
        feed = self.feeds.get(run_id)
        if feed is None or (feed.task.done() and feed.final is None):  # a poller that died: start again
            feed = self.feeds[run_id] = _Feed(self.runs, run_id, self.interval)
        feed.subscribers += 1
        try:
            sent = 0
            while True:
                while sent < len(feed.events):
                    yield feed.events[sent]
                    sent += 1
                if feed.final is not None:
                    yield feed.final
                    return
                if feed.task.done():  # the poller failed (the run's folder went away): end the stream
                    if not feed.task.cancelled() and feed.task.exception() is not None:
                        logger.warning("training %s: events stopped: %s", run_id, feed.task.exception())
                    return
                if not await feed.changed(keep_alive_s):
                    yield KEEP_ALIVE
        finally:
            feed.subscribers -= 1
            if feed.subscribers == 0 and self.feeds.get(run_id) is feed:
                del self.feeds[run_id]
                feed.task.cancel()
