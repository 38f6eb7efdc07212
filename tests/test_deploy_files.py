"""The deployment files agree with each other and with docs/deploy.md (issue 21, item 7). Static: no Docker, no Ray.

deploy/serve_config.yaml and the Dockerfile name the same models folder; the image installs the `ray` extra by
default (one image runs `serve` and `serve --ray`); every file the Dockerfile copies survives .dockerignore;
`make serve-ray` passes PORT=/HOST= on as `make serve` does.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess

import pytest
import yaml

from tests.http_support import ROOT


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_serve_config_and_the_image_use_the_same_models_folder():
    image = re.search(r"FLUX_MODELS_DIR=(\S+)", _dockerfile()).group(1)
    config = yaml.safe_load((ROOT / "deploy" / "serve_config.yaml").read_text())
    (app,) = config["applications"]
    assert app["runtime_env"]["env_vars"]["FLUX_MODELS_DIR"] == image == "/app/models"
    assert f'VOLUME ["{image}"]' in _dockerfile()


def test_the_image_installs_the_ray_extra_unless_told_not_to():
    text = _dockerfile()
    assert re.search(r"^ARG EXTRAS=ray$", text, re.M)
    assert 'pip install ".${EXTRAS:+[$EXTRAS]}"' in text
    for extras, spec in (("ray", ".[ray]"), ("", ".")):
        out = subprocess.run(["sh", "-c", 'printf %s ".${EXTRAS:+[$EXTRAS]}"'], env={"EXTRAS": extras},
                             capture_output=True, text=True, check=True).stdout
        assert out == spec


def test_every_file_the_image_copies_is_in_the_build_context():
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]

    def ignored(path: str) -> bool:
        out = False
        for rule in rules:
            negate = rule.startswith("!")
            pattern = rule[1:] if negate else rule
            if fnmatch.fnmatch(path, pattern) or fnmatch.fnmatch(path, pattern.rstrip("/") + "/*"):
                out = not negate
        return out

    for line in _dockerfile().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (ROOT / source).exists(), source
                assert not ignored(source), f"{source} is copied by the Dockerfile but excluded by .dockerignore"


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_serve_ray_takes_port_and_host_like_make_serve():
    out = subprocess.run(["make", "-n", "serve-ray", "PORT=8123", "HOST=0.0.0.0"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    line = [x for x in out.splitlines() if "serve --ray" in x][-1]
    assert "--port 8123" in line and "--host 0.0.0.0" in line and "--replicas 2" in line
