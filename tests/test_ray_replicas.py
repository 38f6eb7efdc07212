"""What each Ray engine replica asks for, and more replicas than GPUs as a start-up error (no Ray cluster needed).

Ray does not refuse a replica it cannot place: it waits for a GPU forever and the service never becomes ready.
So ``flux-service serve --ray`` checks replicas x FLUX_RAY_GPUS_PER_REPLICA against the cluster's GPUs first.
"""

from __future__ import annotations

import pytest

from app.ray_serve.launch import engine_actor_options
from pipelines.errors import ConfigError
from tests.conftest import make_settings


def test_more_replicas_than_gpus_is_a_config_error_naming_both_numbers():
    with pytest.raises(ConfigError, match=r"--replicas 2 .* needs 2 GPU\(s\), but the Ray cluster has 1"):
        engine_actor_options(make_settings(), 2, 1.0, cuda=True, cluster_gpus=1)


def test_a_fraction_of_a_gpu_lets_two_replicas_share_one():
    options = engine_actor_options(make_settings(ray_gpus_per_replica=0.5), 2, 1.0, cuda=True, cluster_gpus=1)
    assert options == {"num_gpus": 0.5, "num_cpus": 1}


def test_replicas_on_cpu_ask_for_cpus_only():
    options = engine_actor_options(make_settings(), 4, 0.5, cuda=False, cluster_gpus=0)
    assert options == {"num_cpus": 0.5}


def test_gpus_per_replica_setting_is_read_and_checked(monkeypatch):
    from pipelines.settings import load_settings

    monkeypatch.setenv("FLUX_RAY_GPUS_PER_REPLICA", "0.25")
    assert load_settings(_env_file=None).ray_gpus_per_replica == 0.25
    monkeypatch.setenv("FLUX_RAY_GPUS_PER_REPLICA", "0")
    with pytest.raises(ConfigError, match="FLUX_RAY_GPUS_PER_REPLICA"):
        load_settings(_env_file=None)


def test_the_application_builder_checks_before_anything_starts(monkeypatch):
    """The check is wired into the Serve application build (a CUDA host seen as such), not only the function."""
    import app.ray_serve.engine_deployment as deployment
    from app.ray_serve.launch import build_application

    monkeypatch.setattr(deployment, "_cuda", lambda: True)
    with pytest.raises(ConfigError, match="--replicas 3"):
        build_application({"replicas": 3}, make_settings(device="auto"), cluster_gpus=2)
