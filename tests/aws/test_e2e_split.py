"""The split deployment end to end, on the local AWS endpoint: an API process with an empty
models folder and two workers with models, each in its own working directory, sharing nothing
but AWS. Real processes and nodes (tiny checkpoint), execution isolated in child processes.

Covers: the model catalog (the API lists and validates the workers' checkpoint); upload through
the API -> LoadImage on a worker -> GET /view on the API; a node that segfaults (the worker
survives, the job fails typed, the next job runs); SIGTERM of a busy worker (it exits 0, its
job is handed back and finished by the other worker, never lost)."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from comfyd.backends.aws import build_job_store
from comfyd.backends.aws.init import aws_init
from comfyd.backends.aws.local_endpoint import LocalAwsEndpoint
from comfyd.backends.aws.session import AwsSession
from comfyd.engine.interfaces import JobStatus
from comfyd.settings import Settings

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TINY = "comfyd-tiny-sd1.safetensors"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(condition, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (250, 200, 10)).save(out, format="PNG")
    return out.getvalue()


def _image_workflow(middle: str) -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
        "2": {"class_type": middle, "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "split"}},
    }


def _long_workflow() -> dict:
    from comfyd.runner import default_workflow

    workflow = default_workflow("a slow lighthouse")
    workflow["4"]["inputs"]["ckpt_name"] = TINY
    workflow["5"]["inputs"].update(width=64, height=64)
    workflow["3"]["inputs"].update(steps=600, seed=5)
    return workflow


def test_split_deployment(moto_endpoint: LocalAwsEndpoint, tmp_path: Path, settings: Settings) -> None:
    from comfyd.models.tiny import make_tiny_checkpoint

    aws_init(settings, AwsSession.from_settings(settings))
    store = build_job_store(settings, AwsSession.from_settings(settings))
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COMFYD_", "AWS_"))},
        # Each process keeps its data (models/, output/, ...) in its own working directory.
        "COMFYD_HOME": ".",
        **moto_endpoint.environment(),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "COMFYD_CONFIG": os.devnull,
        "COMFYD_STORAGE": "s3", "COMFYD_S3_BUCKET": settings.s3_bucket, "COMFYD_S3_PREFIX": settings.s3_prefix,
        "COMFYD_JOBSTORE": "dynamodb", "COMFYD_DYNAMODB_TABLE": settings.dynamodb_table,
        "COMFYD_QUEUE": "sqs", "COMFYD_SQS_QUEUE": settings.sqs_queue, "COMFYD_METRICS": "none",
        "COMFYD_AWS_REGION": "us-east-1", "COMFYD_DEVICE": "cpu", "OMP_NUM_THREADS": "1",
        "COMFYD_RETRY_BACKOFF_S": "0.2", "COMFYD_JOB_TIMEOUT_S": "300", "COMFYD_SHUTDOWN_GRACE_S": "1",
        "COMFYD_ISOLATION_KILL_GRACE_S": "5", "COMFYD_REQUEUE_AFTER_S": "0",
    }
    processes: dict[str, subprocess.Popen] = {}

    def start(name: str, args: list[str]) -> None:
        home = tmp_path / name
        (home / "models").mkdir(parents=True, exist_ok=True)  # each its own working directory
        log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        processes[name] = subprocess.Popen([sys.executable, *args], cwd=home, env=env, stdout=log,
                                           stderr=subprocess.STDOUT)

    def log_of(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")[-5000:]

    for name in ("w1", "w2"):
        make_tiny_checkpoint(tmp_path / name / "models" / "checkpoints", family="sd1", fmt="single", seed=0)
    try:
        env["COMFYD_PORT"] = str(port)
        start("api", [str(HERE / "split_api.py")])
        for name in ("w1", "w2"):
            start(name, ["-m", "comfyd.worker", "--runtime", "split_nodes:build", "--worker-id", name,
                         "--visibility-timeout", "4", "--poll", "1"])
        api = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120)

        def api_up() -> bool:
            assert processes["api"].poll() is None, log_of("api")
            try:
                return api.get("/system_stats").status_code == 200
            except httpx.TransportError:
                return False

        _wait(api_up, 120, "the API")
        assert not list((tmp_path / "api" / "models").rglob("*.safetensors"))

        # 1. The catalog: the API, without models, lists the workers' checkpoint.
        def catalog_lists_tiny() -> bool:
            for name in ("w1", "w2"):
                assert processes[name].poll() is None, log_of(name)
            return TINY in api.get("/models/checkpoints").json()

        _wait(catalog_lists_tiny, 300, "the workers to publish their models", interval=1.0)

        def finished(job_id: str) -> bool:
            job = store.get(job_id)
            return job is not None and job.status.terminal

        # 2. Upload -> LoadImage on a worker -> /view on the API.
        assert api.post("/upload/image", files={"image": ("photo.png", _png(), "image/png")}).status_code == 200
        reply = api.post("/prompt", json={"prompt": _image_workflow("ImageInvert"), "prompt_id": "invert"})
        assert reply.status_code == 200, reply.text
        _wait(lambda: finished("invert"), 300, "the invert job")
        job = store.get("invert")
        assert job.status is JobStatus.SUCCEEDED, job.error
        image = job.outputs["3"]["images"][0]
        view = api.get("/view", params={"filename": image["filename"], "subfolder": image["subfolder"]})
        assert view.status_code == 200
        with Image.open(io.BytesIO(view.content)) as shown:
            pixel = shown.convert("RGB").getpixel((4, 4))
            assert all(abs(a - b) <= 1 for a, b in zip(pixel, (5, 55, 245), strict=True))  # inverted on the worker

        # 3. A node that segfaults: the job fails typed; the worker lives and runs the next job.
        assert api.post("/prompt", json={"prompt": _image_workflow("TestSegfault"), "prompt_id": "crash"}).status_code == 200
        _wait(lambda: finished("crash"), 300, "the crashing job")
        crashed = store.get("crash")
        assert crashed.status is JobStatus.FAILED and crashed.error["exception_type"] == "ChildProcessCrashed"
        assert all(processes[n].poll() is None for n in ("api", "w1", "w2"))
        assert api.post("/prompt", json={"prompt": _image_workflow("ImageInvert"), "prompt_id": "after"}).status_code == 200
        _wait(lambda: finished("after"), 300, "the job after the crash")
        assert store.get("after").status is JobStatus.SUCCEEDED

        # 4. SIGTERM of a busy worker: it exits 0, its job is handed back and finished elsewhere.
        assert api.post("/prompt", json={"prompt": _long_workflow(), "prompt_id": "long"}).status_code == 200
        holder = _wait(lambda: (j := store.get("long")) is not None and j.status is JobStatus.RUNNING and j.worker_id,
                       300, "a worker to start the long job")
        processes[holder].send_signal(signal.SIGTERM)
        assert processes[holder].wait(120) == 0, log_of(holder)
        _wait(lambda: finished("long"), 600, "the long job on the other worker", interval=1.0)
        long_job = store.get("long")
        assert long_job.status is JobStatus.SUCCEEDED, long_job.error
        assert long_job.worker_id != holder and long_job.attempts == 1  # the handed-back attempt did not count
        assert "handing job back" in log_of(holder)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
