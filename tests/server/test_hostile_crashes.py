"""Hostile-input issue, items 8 and 9: kill -9 at the worst moments, on a real server process.

Every wait synchronises on files the nodes write or on the process ending, never on sleeps.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_history(url: str, prompt_id: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entry = httpx.get(f"{url}/history/{prompt_id}", timeout=5).json()
        if prompt_id in entry:
            return entry[prompt_id]
        time.sleep(0.05)
    raise AssertionError(f"{prompt_id} has no history after {timeout}s")


def launch(tmp_path: Path, port: int, **env_extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    env.update({
        "COMFYD_DB_PATH": str(tmp_path / "comfyd.db"), "COMFYD_OUTPUT_DIR": str(tmp_path / "output"),
        "COMFYD_INPUT_DIR": str(tmp_path / "input"), "COMFYD_TEMP_DIR": str(tmp_path / "temp"),
        "COMFYD_MODELS_DIR": str(tmp_path / "models"), "COMFYD_RATE_LIMIT_PER_MINUTE": "0",
        "COMFYD_CONFIG": os.devnull, "COMFYD_TEST_DIR": str(tmp_path), **env_extra,
    })
    for name in ("output", "input", "temp"):
        (tmp_path / name).mkdir(exist_ok=True)
    process = subprocess.Popen([sys.executable, str(HERE / "hostile_server.py"), str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:  # crashed at once (a recovered culprit): the caller restarts
            return process
        try:
            if httpx.get(f"{url}/health-check", timeout=1).json()["status"] == "READY":
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError("server did not become READY")


@pytest.mark.slow  # three server processes start and die
def test_crash_is_blamed_on_the_job_computing_not_the_one_loading(tmp_path: Path) -> None:
    """Item 9: the culprit kills the process while another job loads a (shared) model; after
    retry_attempts + 1 crashes only the culprit is failed as crashed; the other job then runs."""
    settings = {"COMFYD_MAX_CONCURRENT_JOBS": "2", "COMFYD_RETRY_ATTEMPTS": "1"}
    port = free_port()
    process = launch(tmp_path, port, **settings)
    url = f"http://127.0.0.1:{port}"
    innocent = {"1": {"class_type": "TestLoadWait", "inputs": {"tag": "i"}},
                "9": {"class_type": "TestSave", "inputs": {"value": ["1", 0], "filename_prefix": "i", "folder": "output"}}}
    culprit = {"1": {"class_type": "TestCrash", "inputs": {"tag": "c"}},
               "9": {"class_type": "TestSave", "inputs": {"value": ["1", 0], "filename_prefix": "c", "folder": "output"}}}
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/prompt", json={"prompt": innocent, "prompt_id": "innocent"}).status_code == 200
        assert http.post("/prompt", json={"prompt": culprit, "prompt_id": "culprit"}).status_code == 200
    crashes = 0
    for _ in range(6):  # each start: both jobs are recovered, the culprit kills the process again
        assert process.wait(60) != 0
        crashes += 1
        port = free_port()
        process = launch(tmp_path, port, **settings)
        url = f"http://127.0.0.1:{port}"
        if process.poll() is None:
            entry = httpx.get(f"{url}/history/culprit", timeout=5).json()
            if "culprit" in entry:
                break
    try:
        assert crashes == 2  # retry_attempts=1: the second crash in the culprit ends it
        culprit_entry = wait_history(url, "culprit")
        assert culprit_entry["status"]["status_str"] == "error"
        job = httpx.get(f"{url}/predictions/culprit", timeout=5).json()
        assert "died during" in (job["error"] or "") or "stopped while running" in (job["error"] or "")
        assert httpx.get(f"{url}/predictions/innocent", timeout=5).json()["status"] == "processing"
        (tmp_path / "release").write_text("go")
        assert wait_history(url, "innocent")["status"]["status_str"] == "success"
    finally:
        process.kill()
        process.wait(10)


@pytest.mark.slow  # two server processes
def test_kill_9_after_save_reruns_into_the_same_files(tmp_path: Path) -> None:
    """Item 8: killed after SaveImage wrote its PNGs, before success was stored; the re-run
    overwrites the same names and history references exactly the files on disk."""
    port = free_port()
    process = launch(tmp_path, port, COMFYD_MAX_CONCURRENT_JOBS="1")
    url = f"http://127.0.0.1:{port}"
    workflow = {"3": {"class_type": "TestSleep", "inputs": {"seconds": 0.0, "steps": 1, "tag": "s"}},
                "9": {"class_type": "TestSaveCrash", "inputs": {"value": ["3", 0], "filename_prefix": "shot"}}}
    with httpx.Client(base_url=url, timeout=10) as http:
        assert http.post("/prompt", json={"prompt": workflow, "prompt_id": "saver"}).status_code == 200
    assert process.wait(60) != 0
    assert (tmp_path / "crashed-once").exists()
    first_files = sorted(p.name for p in (tmp_path / "output").glob("*.png"))
    assert first_files == ["shot_00001_.png", "shot_00002_.png"]
    port = free_port()
    process = launch(tmp_path, port, COMFYD_MAX_CONCURRENT_JOBS="1")
    url = f"http://127.0.0.1:{port}"
    try:
        entry = wait_history(url, "saver")
        assert entry["status"]["status_str"] == "success"
        named = sorted(image["filename"] for image in entry["outputs"]["9"]["images"])
        assert named == first_files
        assert sorted(p.name for p in (tmp_path / "output").glob("*.png")) == first_files
    finally:
        process.kill()
        process.wait(10)
