"""Helpers for the HTTP and jobs tests: a real uvicorn server process, and small PNG/metrics readers.

Why a real process: the issue asks for the service as users run it (uvicorn, real sockets, real ``curl``),
so disconnects, SIGTERM and concurrency are the real thing. One server per configuration is started on
first use and shared by every test module (cached here, stopped at exit), because a start costs seconds.
"""

from __future__ import annotations

import atexit
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.conftest import CPU_ENV

ROOT = Path(__file__).resolve().parent.parent
TEST_TASKS = ROOT / "tests" / "data" / "http_tasks.toml"

#: what every test server runs with (CPU float32 like the tests' references, small sizes allowed, the 2-step
#: task table); the server's environment has no other FLUX_* variable
BASE_ENV = {
    **CPU_ENV,
    "FLUX_MIN_SIZE": "16",
    "FLUX_TASKS_FILE": str(TEST_TASKS),
    "FLUX_QUEUE_SIZE": "3",
    "FLUX_REQUEST_TIMEOUT_S": "120",
    "FLUX_SHUTDOWN_GRACE_S": "20",
}

SMALL = {"width": "64", "height": "64", "num_inference_steps": "2"}
#: the same in a JSON body, where numbers are numbers ("64" is refused there: one rule set, typed values)
SMALL_JSON = {"width": 64, "height": 64, "num_inference_steps": 2}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """``python -m uvicorn tests.hooks:create_app --factory --http app.http.server_guard:GuardedH11Protocol`` on
    a free port, configured by environment: the product's ``app.main:create_app`` plus the test routes
    (tests/hooks.py). ``cli=True``: ``flux-service serve`` (``python -m tests.hooks serve``), likewise."""

    def __init__(self, target: str = "tests.hooks:create_app", factory: bool = True, data_dir: Path | None = None,
                 cli: bool = False, **env: str) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = Path(tempfile.mkstemp(prefix="flux-http-", suffix=".log")[1])
        #: the job store folder; pass the same one to a second server to test a restart
        self.data_dir = Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="flux-http-data-"))
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
        full_env.update(BASE_ENV)
        full_env["FLUX_DATA_DIR"] = str(self.data_dir)
        full_env.update(env)
        command = [sys.executable, "-m", "uvicorn", target, *(["--factory"] if factory else []), "--host",
                   "127.0.0.1", "--port", str(self.port), "--log-level", "info",
                   "--http", "app.http.server_guard:GuardedH11Protocol"]  # slow-client limits, as docs/http-api.md says
        if cli:  # what `flux-service serve` runs
            command = [sys.executable, "-m", "tests.hooks", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT, env=full_env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kw.pop("timeout", 120), **kw)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_SERVERS: dict[str, LiveServer] = {}


def shared_server(name: str = "default", **env: str) -> LiveServer:
    """The server for this configuration, started on first use and reused by every later test."""
    server = _SERVERS.get(name)
    if server is None or server.proc.poll() is not None:
        server = _SERVERS[name] = LiveServer(**env)
    return server


@atexit.register
def _stop_all() -> None:
    for server in _SERVERS.values():
        server.stop()


# ---------------------------------------------------------------------- readers
def png_info(data: bytes) -> tuple[tuple[int, int], dict]:
    """(width, height) and the generation info embedded in the PNG."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return img.size, json.loads(img.info["flux-service"])


def pixels(data: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


def metric(text: str, name: str, **labels: str) -> float:
    """One sample from a Prometheus text page (0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(\{{(.*)\}})? (\S+)$", re.M)
    for m in pattern.finditer(text):
        got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
        if got == want:
            return float(m.group(3))
    return 0.0


def wait_until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{what} not met within {timeout:g}s")


TERMINAL_EVENTS = ("succeeded", "failed", "cancelled")


def read_events(url: str, out: list, timeout: float = 120, until_terminal: bool = True) -> None:
    """Follow a server-sent event stream at ``url``, appending each (event name, data) to ``out``; returns after
    a terminal job event (``until_terminal``) or when the server ends the stream."""
    name = None
    with httpx.stream("GET", url, timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
                if until_terminal and name in TERMINAL_EVENTS:
                    return


class StepDelay:
    """Context manager: slow every denoising step of a server down (test hook), reset on exit."""

    def __init__(self, client: httpx.Client, seconds: float) -> None:
        self.client, self.seconds = client, seconds

    def __enter__(self):
        self.client.post("/_test/step-delay", json={"seconds": self.seconds}).raise_for_status()
        return self

    def __exit__(self, *exc):
        self.client.post("/_test/step-delay", json={"seconds": 0}).raise_for_status()


def drain_jobs(client: httpx.Client, ids: list[str]) -> None:
    """Cancel jobs a test left behind, so the next test starts with an empty queue."""
    for job_id in ids:
        client.delete(f"/api/jobs/{job_id}")
