"""A Ray head as an operator starts it (``ray start --head``), for tests/test_ray_operations.py.

Its own ports (the fixed defaults 6379, 8265, 10001 and 52365 may be taken by another cluster on the host), its
own temp folder (``RAY_TMPDIR``: its sessions, logs and address file, apart from any other Ray on the host) and
token authentication with a token made for the test (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN``, the way
docs/deploy.md tells operators), so the documented path is the tested one. ``env`` is what every process of the
test that talks to it runs with. Stopping it: SIGTERM to ``ray start --block`` (which stops what it started),
then anything still running from its temp folder is killed; never ``ray stop``, which stops every Ray on the host.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.http_support import ROOT, _free_port

RAY = str(Path(sys.executable).parent / "ray")
SERVE = str(Path(sys.executable).parent / "serve")


class RayHead:
    def __init__(self, num_cpus: int = 3) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths have a length limit
        self.gcs_port, self.dashboard_port, self.serve_port = _free_port(), _free_port(), _free_port()
        self.gcs = f"127.0.0.1:{self.gcs_port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        self.token = secrets.token_hex(16)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("FLUX_", "RAY_"))}
        self.env.update({"RAY_TMPDIR": str(self.tmp), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                         "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "OMP_NUM_THREADS": "1",
                         "RAY_USAGE_STATS_ENABLED": "0"})
        self.log = self.tmp / "head.log"
        command = [RAY, "start", "--head", "--block", f"--port={self.gcs_port}", f"--num-cpus={num_cpus}",
                   "--node-ip-address=127.0.0.1", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                   f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={_free_port()}",
                   f"--dashboard-agent-listen-port={_free_port()}", "--min-worker-port=0", "--max-worker-port=0"]
        self.proc = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=self.log.open("wb"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        started = time.monotonic()
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if httpx.get(f"{self.dashboard}/api/version", headers=self.auth, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() - started < 180, "the Ray head did not start:\n" + self.log.read_text()[-3000:]
            time.sleep(0.5)

    @property
    def auth(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    def applications(self) -> dict:
        """Serve's applications on the head (the dashboard's REST API, what ``serve status`` reads)."""
        r = httpx.get(f"{self.dashboard}/api/serve/applications/", headers=self.auth, timeout=30)
        r.raise_for_status()
        return r.json().get("applications") or {}

    def run(self, *command: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), cwd=ROOT, env=env or self.env, capture_output=True, text=True,
                              timeout=timeout)

    def stop(self) -> None:
        import psutil

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        left = []
        for p in psutil.process_iter(["cmdline", "environ"]):
            try:
                mine = str(self.tmp) in " ".join(p.info["cmdline"] or []) or \
                    (p.info["environ"] or {}).get("RAY_TMPDIR") == str(self.tmp)
            except psutil.Error:
                continue
            if mine and p.pid != os.getpid():
                left.append(p)
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)
