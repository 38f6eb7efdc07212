"""Item 27 of issue 17: every LoRA of a multi-LoRA request is tracked by an engine replica's LRU.

The replica's residency (``LoraLru``) and the routing key (``lora_set_id``) run here on a real engine and a real
planning engine (the Ray ingress's), with the two-LoRA task table of tests/test_engine_multi_lora.py; no Ray
cluster is needed for them (tests/test_ray_serve.py runs the replicas themselves).
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from app.jobs.job import Job
from app.ray_serve.lora_lru import LoraLru, files_of, lora_set_id
from tests.conftest import make_settings
from tests.engine_helpers import request
from tests.test_engine_multi_lora import write_models


@pytest.fixture(scope="module")
def models(engine, tmp_path_factory):
    return write_models(engine, tmp_path_factory.mktemp("ray-loras") / "models")


@pytest.fixture(scope="module")
def replica_engine(engine, models):
    """An engine as a replica holds it: every task LoRA unloaded after the start-up check."""
    from pipelines.engine import FluxEngine
    from pipelines.tasks import load_task_table

    pipe = engine.pipe.__class__.from_pretrained(str(engine.source.path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    eng = FluxEngine(pipe, engine.source, make_settings(models_dir=models), "cpu", engine.dtype,
                     load_task_table(models / "tasks.toml"))
    for adapter in eng.resident_adapters():
        eng.unload_adapter(adapter.file)
    return eng


def _job(**fields) -> Job:
    return Job(request=request(**fields), kind="job", deadline=time.monotonic() + 60, total=2,
               adapter="x" if fields.get("task") not in (None, "plain") else None)


def test_the_routing_key_names_every_lora_of_the_request(models):
    from app.ray_serve.planning import planning_engine

    planner = planning_engine(make_settings(models_dir=models, tasks_file=models / "tasks.toml"))
    both = files_of(lora_set_id(planner, _job(task="host_on_film")))
    assert [p.split("/lora/")[1].split("/")[0] for p in both] == ["film_look", "host_person"]  # sorted: a set
    added = lora_set_id(planner, _job(task="host_face", loras=(("film_look", 0.4),)))
    assert json.loads(added) == both  # the same set, however the request put it together
    assert len(files_of(lora_set_id(planner, _job(task="host_face")))) == 1
    assert lora_set_id(planner, _job(task="plain")) == ""


def test_the_replica_unloads_every_lora_of_an_evicted_set_and_reloads_it_exactly(models, replica_engine):
    from app.ray_serve.planning import planning_engine

    planner = planning_engine(make_settings(models_dir=models, tasks_file=models / "tasks.toml"))
    both = files_of(lora_set_id(planner, _job(task="host_on_film")))
    host = files_of(lora_set_id(planner, _job(task="host_face")))
    lru = LoraLru(replica_engine, max_loras=1)

    def resident() -> set[str]:
        return {str(a.file) for a in replica_engine.resident_adapters()}

    lru.use(both)  # the set being served stays whole, even beyond the bound
    assert resident() == set(both)
    first = replica_engine.generate(request(task="host_on_film")).image
    assert lru.use(host) == [f for f in both if f not in host]  # film_look goes; before, it stayed for good
    assert resident() == set(host) and lru.resident() == host
    lru.use(both)
    again = replica_engine.generate(request(task="host_on_film"))
    assert [(x["name"], x["scale"]) for x in again.info.loras] == [("host_person", 0.7), ("film_look", 0.4)]
    assert np.array_equal(np.asarray(again.image), np.asarray(first))
