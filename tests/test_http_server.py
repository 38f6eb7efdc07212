"""The process as operators run it: ``uvicorn app.main:app`` and a graceful SIGTERM."""

from __future__ import annotations

import signal
import threading

import httpx
import pytest

from tests.http_support import LiveServer, wait_until


def test_uvicorn_app_main_app_serves_and_sigterm_lets_the_running_image_finish():
    server = LiveServer("app.main:app", factory=False)  # what `uvicorn app.main:app` users run (no test hooks)
    try:
        with server.client() as c:
            result = {}

            def slow_request():  # long enough (about a second of demo-model time) to be running at the signal
                with httpx.Client(base_url=server.url, timeout=60) as c2:
                    result["r"] = c2.post("/api/generate-image", data={"prompt": "finish me", "width": "512",
                                                                       "height": "512", "num_inference_steps": "40"})

            t = threading.Thread(target=slow_request)
            t.start()
            wait_until(lambda: "flux_worker_busy 1.0" in c.get("/metrics").text)
            server.terminate()
            t.join(timeout=60)
        assert result["r"].status_code == 200 and result["r"].headers["x-steps"] == "40"
        # uvicorn re-raises the captured SIGTERM after a clean shutdown, so the status is -SIGTERM
        assert server.proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = server.log.read_text()
        assert "Application shutdown complete" in log and "Traceback" not in log
        # the image was still running when the signal came: the drain started before it was made
        assert log.index("taking no new work") < log.index("generated task=")
    finally:
        server.stop()


def test_bad_task_configuration_stops_start_up_naming_the_file(tmp_path):
    tasks = tmp_path / "tasks.toml"
    tasks.write_text('[tasks.ghost]\ndescription = "no such LoRA"\nlora = "lora/does_not_exist"\n'
                     'lora_alpha = 0.7\nwidth = 64\nheight = 64\n')
    with pytest.raises(RuntimeError, match="server exited") as failed:
        LiveServer(FLUX_TASKS_FILE=str(tasks))
    assert "does_not_exist" in str(failed.value) and "ghost" in str(failed.value)
