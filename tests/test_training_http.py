"""``/api/trainings`` against a real uvicorn server on the demo model: upload, follow the events, samples,
registered task, bad data, cancel, and a service restart in the middle of a training (it resumes)."""

from __future__ import annotations

import json

import pytest

from tests.http_support import _SERVERS, LiveServer, wait_until
from tests.training_support import red_photos, training_server


@pytest.fixture(scope="module")
def live(engine):  # engine: the demo model is built before the server starts
    return training_server()


@pytest.fixture(scope="module")
def env(live, tmp_path_factory):
    _, base, env_vars = live
    return {"base": base, "photos": red_photos(tmp_path_factory.mktemp("photos") / "p"), "env": env_vars}


@pytest.fixture(scope="module")
def server(live):
    return live[0]


def _files(folder):
    return [("photos", (p.name, p.read_bytes(), "image/png")) for p in sorted(folder.iterdir())]


def _events(client, run_id):
    """Read the SSE stream to its end: [(event, data), ...]."""
    out = []
    with client.stream("GET", f"/api/trainings/{run_id}/events", timeout=240) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append((name, json.loads(line[6:])))
    return out


def test_upload_train_follow_and_register_the_task(server, env):
    with server.client(timeout=240) as c:
        r = c.post("/api/trainings", files=_files(env["photos"]),
                   data={"name": "red", "trigger": "ohwx", "task": "red_face", "steps": "12"})
        assert r.status_code == 202, r.text
        run = r.json()
        assert r.headers["location"] == f"/api/trainings/{run['id']}"
        assert run["status"] in ("queued", "running") and run["dataset"]["images"] == 4
        events = _events(c, run["id"])
        kinds = [k for k, _ in events]
        assert kinds[0] == "state" and kinds[-1] == "succeeded", events[-1]
        steps = [d for k, d in events if k == "step"]
        assert [d["step"] for d in steps] == list(range(1, 13)) and all(d["loss"] > 0 for d in steps)
        samples = [d for k, d in events if k == "sample"]
        assert [d["step"] for d in samples] == [0, 12]
        png = c.get(samples[-1]["url"])
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        done = c.get(f"/api/trainings/{run['id']}").json()
        assert done["status"] == "succeeded" and len(done["losses"]) == 12 and done["lora"] == "lora/red"
        assert c.get(done["sample_sheet_url"]).status_code == 200
        assert json.loads(c.get(done["report_url"]).content)["steps_done"] == 12
        assert done["task_served"] is True  # served at once, no restart: generate with it
        tasks = {t["name"]: t for t in c.get("/api/tasks").json()["tasks"]}
        assert tasks["red_face"]["adapter_name"] == "red" and tasks["red_face"]["trigger_words"] == ["ohwx"]
        loras = {lo["name"]: lo for lo in c.get("/api/loras").json()["loras"]}
        assert loras["red"]["path"] == "lora/red"  # relative to the models folder, never a server path (issue 17)
        img = c.post("/api/generate-image", json={"prompt": "portrait", "task": "red_face", "use_model_manager": True, "width": 64,
                                                  "height": 64, "num_inference_steps": 2, "seed": 1})
        assert img.status_code == 200, img.text
        assert img.headers["x-adapter"] == "red" and img.headers["x-task"] == "red_face"
    text = (env["base"] / "models" / "tasks.toml").read_text()
    assert "[tasks.red_face]" in text and 'trigger_words = ["ohwx"]' in text
    assert (env["base"] / "models" / "lora" / "red" / "pytorch_lora_weights.safetensors").is_file()


def test_bad_photos_are_refused_naming_the_files(server, env, tmp_path):
    folder = red_photos(tmp_path / "p", n=4)
    (folder / "broken.jpg").write_bytes(b"junk")
    (folder / "lonely.txt").write_text("caption", encoding="utf-8")
    with server.client() as c:
        r = c.post("/api/trainings", files=_files(folder), data={"name": "bad", "trigger": "ohwx"})
        assert r.status_code == 422
        err = r.json()["error"]
        assert err["type"] == "invalid_dataset" and err["param"] == "photos"
        assert "broken.jpg" in err["message"] and "lonely.txt" in err["message"]
        r = c.post("/api/trainings", files=_files(env["photos"]), data={"name": "red", "trigger": "ohwx"})
        assert r.status_code == 409 and r.json()["error"]["param"] == "name"
        assert c.get("/api/trainings/tr_nope").status_code == 404


def test_cancel_stops_a_running_training_at_a_checkpoint(server, env):
    with server.client() as c:
        run = c.post("/api/trainings", files=_files(env["photos"]),
                     data={"name": "long", "trigger": "ohwx", "steps": "5000"}).json()
        wait_until(lambda: c.get(f"/api/trainings/{run['id']}").json()["step"] >= 2, timeout=120, interval=0.3)
        r = c.delete(f"/api/trainings/{run['id']}")
        assert r.status_code == 200 and r.json()["status"] == "cancelled"
        ckpts = list((env["base"] / "models" / "lora" / "long" / "checkpoints").glob("step-*/state.pt"))
        assert len(ckpts) == 1
        assert not (env["base"] / "models" / "lora" / "long" / "pytorch_lora_weights.safetensors").exists()


def test_a_training_survives_a_service_restart_and_resumes(server, env):
    with server.client() as c:
        run = c.post("/api/trainings", files=_files(env["photos"]),
                     data={"name": "restart", "trigger": "ohwx", "steps": "24"}).json()
        wait_until(lambda: c.get(f"/api/trainings/{run['id']}").json()["step"] >= 3, timeout=120, interval=0.3)
    server.stop()  # SIGTERM: the trainer checkpoints and stops, the run is kept as interrupted
    state = json.loads((env["base"] / "trainings" / run["id"] / "run.json").read_text())
    assert state["status"] == "interrupted"
    again = _SERVERS["trainings"] = LiveServer(**env["env"])  # the restarted service, shared from now on
    with again.client(timeout=240) as c:
        events = _events(c, run["id"])
        assert events[-1][0] == "succeeded", events[-1]
        resumed = [d for k, d in events if k == "resumed"]
        assert resumed and resumed[0]["step"] >= 3
        final = c.get(f"/api/trainings/{run['id']}").json()
        assert final["attempts"] == 2 and [s for s, _ in final["losses"]] == list(range(1, 25))
