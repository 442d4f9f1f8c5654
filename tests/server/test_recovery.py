"""Durability: kill -9 the server mid-job, start it again on the same database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from comfyd.backends.local_queue import LocalJobQueue
from comfyd.backends.sqlite_store import SqliteDatabase, SqliteJobStore
from comfyd.engine.interfaces import JobRecord, JobStatus

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(tmp_path: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "COMFYD_DB_PATH": str(tmp_path / "comfyd.db"), "COMFYD_OUTPUT_DIR": str(tmp_path / "output"),
        "COMFYD_INPUT_DIR": str(tmp_path / "input"), "COMFYD_TEMP_DIR": str(tmp_path / "temp"),
        "COMFYD_MODELS_DIR": str(tmp_path / "models"), "COMFYD_MAX_CONCURRENT_JOBS": "1",
        "COMFYD_RATE_LIMIT_PER_MINUTE": "0", "COMFYD_CONFIG": os.devnull,
    })
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir(exist_ok=True)
    process = subprocess.Popen([sys.executable, str(HERE / "fake_server.py"), str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, "server process exited"
        try:
            if httpx.get(f"{url}/health-check", timeout=1).json()["status"] == "READY":
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise AssertionError("server did not become READY")


def wait_history(url: str, prompt_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = httpx.get(f"{url}/history/{prompt_id}", timeout=5).json()
        if prompt_id in entry:
            return entry[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} has no history after {timeout}s")


def sleep_prompt(seconds: float, steps: int, tag: str) -> dict:
    return {
        "3": {"class_type": "TestSleep", "inputs": {"seconds": seconds, "steps": steps, "tag": tag}},
        "9": {"class_type": "TestSave", "inputs": {"value": ["3", 0], "filename_prefix": tag, "folder": "output"}},
    }


def test_kill_9_mid_job_then_restart_finishes_every_job_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = launch(tmp_path, port)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            done = http.post("/prompt", json={"prompt": sleep_prompt(0.0, 1, "done"), "prompt_id": "job-done"})
            assert done.status_code == 200
            wait_history(url, "job-done")
            for job_id, seconds, steps in (("job-a", 1.5, 30), ("job-b", 0.0, 1), ("job-c", 0.0, 1)):
                body = {"prompt": sleep_prompt(seconds, steps, job_id), "prompt_id": job_id}
                assert http.post("/prompt", json=body).status_code == 200
            prediction = http.put("/predictions/job-d", json={"input": {"workflow_json": sleep_prompt(0, 1, "job-d")}},
                                  headers={"Prefer": "respond-async"})
            assert prediction.status_code == 202
            deadline = time.monotonic() + 10
            while ((http.get("/v1/status").json()["current_progress"] or {}).get("value") or 0) < 1:
                assert time.monotonic() < deadline, "job-a never progressed"
                time.sleep(0.02)
            numbers_before = {item[1]: item[0] for item in http.get("/queue").json()["queue_pending"]}
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = launch(tmp_path, port)
    try:
        entries = {job_id: wait_history(url, job_id) for job_id in ("job-done", "job-a", "job-b", "job-c", "job-d")}
        assert all(e["status"]["status_str"] == "success" for e in entries.values())
        with httpx.Client(base_url=url, timeout=10) as http:
            history = http.get("/history").json()
            assert sorted(history) == ["job-a", "job-b", "job-c", "job-d", "job-done"]
            assert http.get("/queue").json() == {"queue_running": [], "queue_pending": []}
            numbers = {job_id: e["prompt"][0] for job_id, e in entries.items()}
            assert len(set(numbers.values())) == 5
            assert all(numbers[j] == n for j, n in numbers_before.items())  # same jobs, not new ones
            # The same id once more is still the same single job; with another body it is a conflict.
            again = http.post("/prompt", json={"prompt": sleep_prompt(1.5, 30, "job-a"), "prompt_id": "job-a"})
            assert again.json()["number"] == numbers["job-a"]
            other = http.post("/prompt", json={"prompt": sleep_prompt(3.0, 60, "job-a"), "prompt_id": "job-a"})
            assert other.status_code == 409 and other.json()["error"]["type"] == "Conflict"
            assert http.get("/predictions/job-d").json()["status"] == "succeeded"
        # Each job saved exactly one image: the finished one was not re-run, the killed one ran again once.
        for tag in ("done", "job-a", "job-b", "job-c", "job-d"):
            assert len(list((tmp_path / "output").glob(f"{tag}_*.png"))) == 1, tag
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(15)

    store = SqliteJobStore(SqliteDatabase(tmp_path / "comfyd.db"))
    assert store.get("job-a").attempts == 2  # the killed run, then the recovered one
    assert store.get("job-b").attempts == 1


def test_a_finished_job_left_in_the_queue_is_not_run_again(start_server, tmp_path: Path, workflow) -> None:
    """Killed after the job's end was stored but before its queue item was acked."""
    srv_dir = tmp_path / "srv0"
    srv_dir.mkdir()
    db = SqliteDatabase(srv_dir / "comfyd.db")
    store, queue = SqliteJobStore(db), LocalJobQueue(db)
    store.create(JobRecord(id="finished", workflow=workflow(0.0, 1, "finished"), status=JobStatus.SUCCEEDED,
                           number=1, started_at=time.time(), finished_at=time.time()))
    queue.put("finished", 1)
    item = queue.get(0.1)  # received by the process that then died
    assert item is not None
    store.create(JobRecord(id="was-running", workflow=workflow(0.0, 1, "rerun"), status=JobStatus.RUNNING, number=2,
                           attempts=1))
    # A job during which the server died on every attempt (a poison pill) is not started again.
    store.create(JobRecord(id="poison", workflow=workflow(0.0, 1, "poison"), status=JobStatus.RUNNING, number=3,
                           attempts=4))
    db.close()

    srv = start_server()  # same directory: srv0
    assert srv.wait_job("was-running").status is JobStatus.SUCCEEDED
    poison = srv.job("poison")
    assert poison.status is JobStatus.FAILED and poison.error["type"] == "crashed"
    srv.wait_until(lambda: srv.services.queue.depth() == 0, what="queue drained")
    time.sleep(0.2)
    assert srv.recorder.order() == ["rerun"]
    assert srv.job("finished").status is JobStatus.SUCCEEDED


def _submit_and_sigterm_while_running(tmp_path: Path, monkeypatch, grace_s: float, seconds: float) -> int:
    monkeypatch.setenv("COMFYD_SHUTDOWN_GRACE_S", str(grace_s))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = launch(tmp_path, port)
    try:
        with httpx.Client(base_url=url, timeout=10) as http:
            body = {"prompt": sleep_prompt(seconds, 30, "drain"), "prompt_id": "job-drain"}
            assert http.post("/prompt", json=body).status_code == 200
            deadline = time.monotonic() + 30
            while ((http.get("/v1/status").json()["current_progress"] or {}).get("value") or 0) < 1:
                assert time.monotonic() < deadline, "the job never progressed"
                time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        return process.wait(60)
    finally:
        if process.poll() is None:
            process.kill()


def test_sigterm_lets_the_running_job_finish_then_exits_0(tmp_path: Path, monkeypatch) -> None:
    assert _submit_and_sigterm_while_running(tmp_path, monkeypatch, grace_s=60, seconds=1.5) == 0
    job = SqliteJobStore(SqliteDatabase(tmp_path / "comfyd.db")).get("job-drain")
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 1


def test_sigterm_past_the_grace_period_hands_the_job_back(tmp_path: Path, monkeypatch) -> None:
    assert _submit_and_sigterm_while_running(tmp_path, monkeypatch, grace_s=0.2, seconds=30) == 0
    job = SqliteJobStore(SqliteDatabase(tmp_path / "comfyd.db")).get("job-drain")
    assert job.status is JobStatus.QUEUED and job.attempts == 0  # runs at the next start, attempt not counted
