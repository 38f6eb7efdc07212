"""Who holds which unfinished job when several processes share one data folder.

Why: a rolling update of the Ray ingress starts the new ingress while the old one still drains, several
ingress replicas serve one application, and two single-process services may point at one folder. Each of them
opens the same job store. What must stay exclusive is not the folder but each unfinished job: exactly one
process runs it, and a job whose process is gone must be taken over by another (or by the next start).

How: every open store is an *owner* with an id, and holds an exclusive ``flock`` on its own file
``<data_dir>/owners/<id>.lock`` for as long as it is open. A job row names its owner. An owner is alive exactly
while its lock is held: the kernel releases it when the process exits, however it exits (crash, SIGKILL, OOM
kill), so a takeover never waits for a timeout and never steals from a live process. Taking over a job is one
conditional ``UPDATE ... WHERE owner IS <the gone owner>``, so two processes never both get it.

The lock files need what SQLite itself needs from the folder: a local disk, or a network filesystem with
working POSIX locks. Before this scheme a service locked the whole folder (``<data_dir>/lock``); a process of
that older version may still run during an upgrade, and while it holds that lock the jobs that name no owner
(its own) are left to it.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; every other owner counts as gone (one service per folder there)
    fcntl = None

OWNERS = "owners"
LEGACY_LOCK = "lock"  # the whole-folder lock of versions before the shared store


def new_owner_id() -> str:
    """Readable in the database (host and pid say where to look) and unique (a pid is reused after a restart)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class OwnerLock:
    """This process's claim to be alive, held from ``acquire`` to ``release``."""

    def __init__(self, data_dir: Path, owner: str) -> None:
        self.folder = Path(data_dir) / OWNERS
        self.owner = owner
        self.path = self.folder / f"{owner}.lock"
        self._handle = None

    def acquire(self) -> "OwnerLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        if fcntl is not None:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh unique name: never held by another
        self._handle = handle
        return self

    def release(self) -> None:
        if self._handle is None:
            return
        self.path.unlink(missing_ok=True)  # before the unlock: nobody takes a lock on a file about to vanish
        self._handle.close()
        self._handle = None


def owner_alive(data_dir: Path, owner: str) -> bool:
    """True while the process that opened the store as ``owner`` still has it open (its lock is held)."""
    if fcntl is None:
        return False
    path = Path(data_dir) / OWNERS / f"{owner}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False  # released cleanly, or removed by a process that found it gone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True  # cannot tell: never take a job from a process that may be alive
    finally:
        os.close(fd)
    path.unlink(missing_ok=True)  # the owner is gone; its lock file is litter now
    return False


def legacy_service_running(data_dir: Path) -> bool:
    """An older flux-service (whole-folder lock) has this folder open: the jobs without an owner are its own."""
    if fcntl is None:
        return False
    path = Path(data_dir) / LEGACY_LOCK
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
