"""Attacks and careless-user probes against a real ``flux-service serve`` (``bench/adversary.py`` runs them).

A probe is a function ``probe(target) -> None`` that raises ``Failed("what did not hold")`` when the service
did not hold (a 500, a traceback, a hang, memory past its bound, a lost job...). Probes live in modules of
this package by area (``jobs.py``, ``trainings.py``, ``http.py``), each exporting ``PROBES``; they only talk
to servers on 127.0.0.1 that the runner started, and every loop they run is bounded.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx

ROOT = Path(__file__).resolve().parents[2]


class Failed(AssertionError):
    """The service did not hold; the message says what happened."""


@dataclass
class Probe:
    name: str
    run: Callable[["Target"], None]
    severity: str = "medium"  # high | medium | low, as the issue that found it ranked it
    #: servers this probe may break (killed or corrupted): it gets a fresh one, not the shared one
    destructive: bool = False
    #: takes more than a few seconds (skipped by ``--quick``)
    slow: bool = False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """``python -m cli serve`` (what ``flux-service serve`` runs) on the demo model, own data folder."""

    env: dict
    port: int = field(default_factory=_free_port)
    data_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flux-adversary-data-")))
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 300) -> "Server":
        models = self.data_dir / "models"  # its own models folder (trainings write there): the repo's tables
        models.mkdir(parents=True, exist_ok=True)
        for name in ("tasks.toml", "glossary.toml"):
            if not (models / name).exists():
                shutil.copy(ROOT / "models" / name, models / name)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        env.update(FLUX_DATA_DIR=str(self.data_dir), FLUX_MIN_SIZE="16", FLUX_DEVICE="cpu", FLUX_DTYPE="float32",
                   FLUX_TRAININGS_DIR=str(self.data_dir / "trainings"), FLUX_MODELS_DIR=str(self.data_dir / "models"),
                   **self.env)
        self.log = Path(tempfile.mkstemp(prefix="flux-adversary-", suffix=".log")[1])
        self.proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port",
                                      str(self.port)], cwd=ROOT, env=env, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT)
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise Failed(f"server exited with {self.proc.returncode} at start-up: {self.log_tail()}")
            try:
                if httpx.get(self.url + "/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise Failed(f"server not ready after {timeout_s}s: {self.log_tail()}")

    def client(self, **kw) -> httpx.Client:
        headers = dict(kw.pop("headers", {}))
        if self.env.get("FLUX_API_KEY"):
            headers.setdefault("Authorization", f"Bearer {self.env['FLUX_API_KEY']}")
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 60), headers=headers, **kw)

    def log_tail(self, chars: int = 2000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if getattr(self, "log", None) else ""

    def stop(self, grace_s: float = 30) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Target:
    """What a probe gets: servers by configuration (shared unless the probe is destructive)."""

    def __init__(self) -> None:
        self._shared: dict[tuple, Server] = {}
        self.started: list[Server] = []

    def server(self, fresh: bool = False, **env: str) -> Server:
        key = tuple(sorted(env.items()))
        if not fresh and key in self._shared and self._shared[key].proc.poll() is None:
            return self._shared[key]
        server = Server(env=dict(env)).start()
        self.started.append(server)
        if not fresh:
            self._shared[key] = server
        return server

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.started if s.proc is not None and s.proc.poll() is None]

    def close(self) -> None:
        for s in self.started:
            s.stop()
