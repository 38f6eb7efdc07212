"""Which finished jobs to forget: past their TTL, or beyond the count or byte bounds, oldest first.

Why count *and* bytes: the count bounds the database and the listing, the bytes bound the disk (one 2048x2048
PNG weighs ~100x a 256x256 one, so a count alone says little about the folder's size). Jobs that are queued or
running are never forgotten (the queue bound limits them). The newest finished job is always kept, even when it
alone exceeds the byte bound, so a client that was just told "succeeded" can fetch its image.
"""

from __future__ import annotations


def to_remove(rows, *, now: float, ttl_s: float, max_kept: int, max_bytes: int) -> list:
    """``rows``: finished jobs, newest first, each with ``finished_at`` and ``image_bytes``."""
    doomed, kept, kept_bytes, full = [], 0, 0, False
    for i, row in enumerate(rows):
        size = row["image_bytes"] or 0
        full = full or kept + 1 > max_kept or (i > 0 and kept_bytes + size > max_bytes)
        if full or now - row["finished_at"] > ttl_s:  # once full, every older job goes too: oldest first
            doomed.append(row)
        else:
            kept += 1
            kept_bytes += size
    return doomed
