"""kill -9 during a Comfy API v2 job: after the restart the job is finished (rerun), never lost,
and its Idempotency-Key still refuses a second submission."""

from __future__ import annotations

import importlib.util
import signal
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent
_spec = importlib.util.spec_from_file_location("v2_recovery_helpers", HERE / "test_recovery.py")
assert _spec is not None and _spec.loader is not None
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
free_port, launch, sleep_prompt = _helpers.free_port, _helpers.launch, _helpers.sleep_prompt


def wait_status(http: httpx.Client, job_id: str, wanted: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/api/v2/jobs/{job_id}").json()
        if body["status"] in wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{job_id} never reached {wanted}")


@pytest.mark.slow  # two server processes start (~15 s here)
def test_kill_9_during_a_v2_job(tmp_path: Path) -> None:
    port = free_port()
    process = launch(tmp_path, port)
    key = "kill-9-key"
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            created = http.post("/api/v2/jobs", json={"workflow": sleep_prompt(1.5, 30, "v2-killed")},
                                headers={"Idempotency-Key": key})
            assert created.status_code == 201
            job_id = created.json()["id"]
            running = wait_status(http, job_id, {"running"})
            deadline = time.monotonic() + 10
            while not (running.get("progress") or {}).get("step"):
                assert time.monotonic() < deadline, "the job never progressed"
                time.sleep(0.02)
                running = http.get(f"/api/v2/jobs/{job_id}").json()
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    port = free_port()
    process = launch(tmp_path, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            done = wait_status(http, job_id, {"succeeded", "failed", "canceled", "expired"})
            assert done["status"] == "succeeded" and len(done["outputs"]) == 1
            content = http.get(done["outputs"][0]["url"])
            assert content.status_code == 200 and content.content.startswith(b"\x89PNG")
            again = http.post("/api/v2/jobs", json={"workflow": sleep_prompt(0, 1, "v2-second")},
                              headers={"Idempotency-Key": key})
            assert again.status_code == 422 and again.json()["error"]["code"] == "idempotency_key_reuse"
            assert [j["id"] for j in http.get("/api/v2/jobs").json()["jobs"]] == [job_id]
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)
    assert len(list((tmp_path / "output").glob("v2-killed_*.png"))) == 1  # rerun once, saved once
