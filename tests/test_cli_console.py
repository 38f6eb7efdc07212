"""What a newcomer sees on the console: `make serve PORT=...`, a start with no third-party noise, no
access-log line per health-check poll, and each warning printed once (real subprocesses, demo model)."""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.http.access_log import HealthCheckFilter
from tests.conftest import CPU_ENV

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--width", "64", "--height", "64", "--steps", "2"]
#: what the libraries printed at every start before: torchvision notices, diffusers' `torch_dtype`
#: FutureWarning, tqdm loading bars
NOISE = re.compile(r"torchvision|FutureWarning|DeprecationWarning|UserWarning|torch_dtype|Loading pipeline "
                   r"components|Loading weights|\d+%\|")


@pytest.fixture(scope="module", autouse=True)
def _demo_built(engine):
    """Build the demo model once (in-process) before the subprocesses use the cache."""


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_") and k != "PYTHONWARNINGS"}
    env.update(CPU_ENV)
    env.update(FLUX_MIN_SIZE="16", PYTHONUNBUFFERED="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_serve_passes_port_and_host_to_the_server():
    def dry(*args: str, **env: str) -> str:
        out = subprocess.run(["make", "-n", "serve", *args], cwd=ROOT, capture_output=True, text=True,
                             env={**os.environ, **env}, timeout=30)
        assert out.returncode == 0, out.stderr
        return [line.rstrip() for line in out.stdout.splitlines() if "flux-service serve" in line][-1]

    assert dry("PORT=8123").endswith("flux-service serve --port 8123")
    assert dry("PORT=8123", "HOST=0.0.0.0").endswith("flux-service serve --host 0.0.0.0 --port 8123")
    # a HOST or PORT that merely sits in the shell's environment does not move the server
    assert dry(HOST="some-machine", PORT="1").endswith("flux-service serve")


def test_serve_starts_without_third_party_noise_and_does_not_log_health_polls(tmp_path):
    port = _free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)], cwd=ROOT,
                                env=_env(FLUX_DATA_DIR=str(tmp_path / "data")),  # not the user's job store
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, log_path.read_text(errors="replace")
            try:
                if httpx.get(base + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            time.sleep(0.2)
        for path in ("/ready", "/health", "/metrics", "/ready?probe=1"):
            assert httpx.get(base + path, timeout=10).status_code == 200
        r = httpx.post(base + "/api/generate-image", timeout=60, data={
            "prompt": "a host", "use_model_manager": "false", "width": "64", "height": "64",
            "num_inference_steps": "2"})
        assert r.status_code == 200, r.text
        assert httpx.get(base + "/api/nowhere", timeout=10).status_code == 404
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    out = log_path.read_text(errors="replace")
    assert not NOISE.search(out), f"third-party noise on the console:\n{out}"
    for path in ("/ready", "/health", "/metrics"):
        assert f'"GET {path}' not in out, f"health-check poll {path} in the access log:\n{out}"
    assert '"POST /api/generate-image HTTP/1.1" 200' in out, "other requests are still logged"
    assert "DEMO MODEL" in out, "our own warnings still reach the console"


def test_health_check_filter_keeps_failures_and_other_paths():
    def record(path: str, status: int) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                 ("127.0.0.1:5", "GET", path, "1.1", status), None)

    f = HealthCheckFilter()
    assert not f.filter(record("/ready", 200)) and not f.filter(record("/metrics?x=1", 200))
    assert f.filter(record("/ready", 503)), "a failing readiness probe is worth a line"
    assert f.filter(record("/api/jobs", 202)) and f.filter(record("/readyz", 200))


def test_health_checks_are_logged_when_asked(caplog):
    from app.http.access_log import quiet_health_checks

    try:
        quiet_health_checks(True)
        assert any(isinstance(f, HealthCheckFilter) for f in logging.getLogger("uvicorn.access").filters)
        quiet_health_checks(False)  # FLUX_LOG_HEALTH_CHECKS=true
        assert not any(isinstance(f, HealthCheckFilter) for f in logging.getLogger("uvicorn.access").filters)
    finally:
        quiet_health_checks(False)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=180, env=_env())


def test_generate_prints_the_chinese_prompt_warning_once_and_no_library_noise(tmp_path):
    # translate=off: the prompt as typed reaches T5, so the unknown-token warning is given
    out = _cli("generate", "科普主持人，专业形象，微笑", "--task", "host_face", "--translate", "off",
               "-o", str(tmp_path / "a.png"), *SMALL)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("unknown token") == 1, out.stderr
    assert out.stderr.count("demo model: random weights") == 1, out.stderr
    ours = [seg for seg in re.split(r"[\r\n]", out.stderr) if not seg.startswith("denoising")]  # our bar
    assert not NOISE.search("\n".join(ours)), out.stderr


def test_compare_prints_each_warning_once_for_both_images(tmp_path):
    out = _cli("compare", "科普主持人，专业形象，微笑", "--task", "host_face", "--translate", "off",
               "-o", str(tmp_path / "c.png"), *SMALL)
    assert out.returncode == 0, out.stderr
    assert out.stderr.count("unknown token") == 1, out.stderr
    assert out.stderr.count("demo model: random weights") == 1, out.stderr
