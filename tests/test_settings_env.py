"""Settings as users write them: real environment variables, a real ``.env`` file, real processes.

Issue 8 item 1: ``FLUX_CORS_ORIGINS=http://a.example flux-service serve`` died with a ``SettingsError``
traceback, because pydantic-settings JSON-decodes list fields before any validator runs. Item 8: an empty
``FLUX_API_KEY`` left the service open. A bad setting must stop start-up with one line naming the variable.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import typing

import httpx
import pytest

from pipelines.errors import ConfigError
from pipelines.settings import Settings, load_settings
from tests.conftest import CPU_ENV
from tests.http_support import ROOT, TEST_TASKS, _free_port


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    env.update(CPU_ENV)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@pytest.fixture()
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("FLUX_"):
            monkeypatch.delenv(key)
    return monkeypatch


# ---------------------------------------------------------------- parsing
def test_comma_separated_origins_from_the_environment(clean_env):
    clean_env.setenv("FLUX_CORS_ORIGINS", "http://a.example, http://b.example:8080/")
    assert Settings(_env_file=None).cors_origins == ["http://a.example", "http://b.example:8080"]


def test_one_origin_from_the_environment(clean_env):
    clean_env.setenv("FLUX_CORS_ORIGINS", "http://a.example")
    assert Settings(_env_file=None).cors_origins == ["http://a.example"]


def test_json_list_of_origins_still_works(clean_env):
    clean_env.setenv("FLUX_CORS_ORIGINS", '["http://a.example", "http://b.example"]')
    assert Settings(_env_file=None).cors_origins == ["http://a.example", "http://b.example"]


def test_comma_separated_origins_from_a_dotenv_file(clean_env, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("FLUX_CORS_ORIGINS=http://a.example,http://b.example\n", encoding="utf-8")
    assert Settings(_env_file=env_file).cors_origins == ["http://a.example", "http://b.example"]


def test_every_list_valued_setting_accepts_the_comma_form():
    """A list setting added later must use ``CommaList`` (NoDecode), or ``FLUX_X=a,b`` breaks start-up again."""
    from pydantic_settings import NoDecode

    for name, field in Settings.model_fields.items():
        if typing.get_origin(field.annotation) is list:
            assert NoDecode in field.metadata, f"{name} is a list setting but not a CommaList"


def test_origin_without_a_scheme_is_a_clear_error(clean_env):
    clean_env.setenv("FLUX_CORS_ORIGINS", "a.example")
    with pytest.raises(ConfigError, match=r"FLUX_CORS_ORIGINS: 'a.example' is not an origin"):
        load_settings(_env_file=None)


def test_empty_api_key_is_an_error_naming_the_variable(clean_env):
    clean_env.setenv("FLUX_API_KEY", "")
    with pytest.raises(ConfigError, match=r"FLUX_API_KEY: is set but empty"):
        load_settings(_env_file=None)


def test_bad_values_are_one_line_naming_each_variable(clean_env):
    clean_env.setenv("FLUX_PORT", "eighty")
    clean_env.setenv("FLUX_CORS_ORIGINS", "[broken")
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    message = err.value.message
    assert "\n" not in message and "FLUX_PORT" in message and "FLUX_CORS_ORIGINS" in message
    assert "'eighty'" in message and "not a JSON list" in message


# ---------------------------------------------------------------- real processes
def _wait_ready(proc: subprocess.Popen, url: str, timeout: float = 180.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server not ready")


def test_serve_starts_with_comma_separated_origins_from_dotenv(tmp_path):
    """As users hit it: ``.env`` in the working folder, ``flux-service serve``, a browser from one origin."""
    (tmp_path / ".env").write_text(
        f"FLUX_CORS_ORIGINS=http://a.example,http://b.example\nFLUX_TASKS_FILE={TEST_TASKS}\n", encoding="utf-8")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port)], cwd=tmp_path,
                            env=_env(FLUX_DATA_DIR=str(tmp_path / "data")),  # not the user's job store
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(proc, url)
        r = httpx.get(f"{url}/api/tasks", headers={"Origin": "http://b.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://b.example"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_cli_reads_comma_separated_origins_from_the_environment(tmp_path):
    """A real process with the issue's variable set: every command builds the settings first (this one is quick)."""
    r = subprocess.run([sys.executable, "-m", "cli", "tasks", "--tasks-file", str(TEST_TASKS)], cwd=tmp_path,
                       env=_env(FLUX_CORS_ORIGINS="http://a.example,http://b.example"), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "host_face" in r.stdout


def test_serve_with_a_bad_setting_prints_one_line_naming_it(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cli", "serve"], cwd=tmp_path,
                       env=_env(FLUX_CORS_ORIGINS="[http://a.example"), capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error (config_error): invalid setting: FLUX_CORS_ORIGINS:")


@pytest.mark.parametrize("target", ["app.main:create_app --factory", "app.main:app"])
def test_uvicorn_with_an_empty_api_key_stops_with_one_line(tmp_path, target):
    r = subprocess.run([sys.executable, "-m", "uvicorn", *target.split(), "--port", str(_free_port())],
                       cwd=tmp_path, env=_env(FLUX_API_KEY=""), capture_output=True, text=True, timeout=60)
    assert r.returncode == 3
    assert "Traceback" not in r.stderr + r.stdout
    assert "error (config_error): invalid setting: FLUX_API_KEY: is set but empty" in r.stderr


@pytest.mark.parametrize("command", [["-m", "cli", "serve"], ["-m", "uvicorn", "app.main:app"]])
def test_a_configuration_error_found_at_start_up_is_one_line_without_a_traceback(tmp_path, command):
    """A bad task table is found inside the lifespan (after uvicorn started): it printed uvicorn's traceback of
    the lifespan before our line. Now: the one line, and a non-zero exit."""
    r = subprocess.run([sys.executable, *command, "--port", str(_free_port())], cwd=tmp_path,
                       env=_env(FLUX_TASKS_FILE=str(tmp_path / "missing.toml"), FLUX_DATA_DIR=str(tmp_path / "data")),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    errors = [line for line in r.stderr.splitlines() if "missing.toml" in line]
    assert len(errors) == 1 and errors[0].startswith("error (config_error): task table ")
