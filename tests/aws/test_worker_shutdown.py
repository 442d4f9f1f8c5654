"""SIGTERM drains a worker: no new work, the running job finishes within the grace period or is
handed back (queued, its message visible at once), metrics are flushed, exit status 0."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfyd.backends.aws.local_endpoint import LocalAwsEndpoint
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.runtime import Services, build_services
from comfyd.settings import Settings

HERE = Path(__file__).parent


@pytest.fixture
def services(settings: Settings, provisioned) -> Services:
    built = build_services(settings)
    yield built
    built.close()


def _wait(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _start_worker(settings: Settings, moto: LocalAwsEndpoint, tmp_path: Path, grace_s: float,
                  command: list[str]) -> subprocess.Popen:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("COMFYD_", "AWS_"))},
        # Each process keeps its data (models/, output/, ...) in its own working directory.
        "COMFYD_HOME": ".",
        **moto.environment(),
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "COMFYD_CONFIG": os.devnull,
        "COMFYD_STORAGE": "s3", "COMFYD_S3_BUCKET": settings.s3_bucket, "COMFYD_S3_PREFIX": settings.s3_prefix,
        "COMFYD_JOBSTORE": "dynamodb", "COMFYD_DYNAMODB_TABLE": settings.dynamodb_table,
        "COMFYD_QUEUE": "sqs", "COMFYD_SQS_QUEUE": settings.sqs_queue,
        "COMFYD_METRICS": "cloudwatch", "COMFYD_CLOUDWATCH_NAMESPACE": settings.cloudwatch_namespace,
        "COMFYD_AWS_REGION": "us-east-1", "COMFYD_SHUTDOWN_GRACE_S": str(grace_s),
        "COMFYD_OUTPUT_DIR": str(tmp_path / "out"), "COMFYD_SPOOL_DIR": str(tmp_path / "spool"),
        "COMFYD_RETRY_BACKOFF_S": "0",
    }
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, *command], env=env, stdout=log, stderr=subprocess.STDOUT)


WORKER = ["-m", "comfyd.worker", "--runtime", "fake_runtime:build", "--poll", "1", "--worker-id", "w1"]


def _sigterm_while_running(services: Services, proc: subprocess.Popen, tmp_path: Path, job_id: str,
                           then=lambda: None) -> int:
    def running() -> bool:
        assert proc.poll() is None, (tmp_path / "worker.log").read_text()
        job = services.job_store.get(job_id)
        return job is not None and job.status is JobStatus.RUNNING

    _wait(running, 120, "the worker to start the job")
    then()
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


def _metric_names(settings: Settings, services: Services) -> set[str]:
    from comfyd.backends.aws import session_for

    cloudwatch = session_for(settings).client("cloudwatch")
    return {m["MetricName"] for m in cloudwatch.list_metrics(Namespace=settings.cloudwatch_namespace)["Metrics"]}


def test_sigterm_hands_a_long_job_back_and_exits_0(settings: Settings, services: Services, fake_runtime,
                                                   moto_endpoint: LocalAwsEndpoint, tmp_path: Path) -> None:
    services.job_store.create(JobRecord(id="long", workflow=fake_runtime.workflow(seconds=600)))
    services.queue.put("long", 1)
    proc = _start_worker(settings, moto_endpoint, tmp_path, grace_s=0.5, command=WORKER)
    assert _sigterm_while_running(services, proc, tmp_path, "long") == 0, (tmp_path / "worker.log").read_text()
    job = services.job_store.get("long")
    assert job.status is JobStatus.QUEUED and job.attempts == 0 and job.worker_id is None
    item = services.queue.get(timeout=2)  # visible again at once, not after the visibility timeout
    assert item is not None and item.job_id == "long"
    assert "handing job back" in (tmp_path / "worker.log").read_text()
    assert "JobsInFlight" in _metric_names(settings, services)  # flushed on the way out


def test_sigterm_lets_a_short_job_finish_within_the_grace_period(settings: Settings, services: Services,
                                                                 fake_runtime, moto_endpoint: LocalAwsEndpoint,
                                                                 tmp_path: Path) -> None:
    services.job_store.create(JobRecord(id="short", workflow=fake_runtime.workflow(seconds=1.5)))
    services.queue.put("short", 1)
    proc = _start_worker(settings, moto_endpoint, tmp_path, grace_s=120, command=WORKER)

    def another_job() -> None:  # arrives while the worker is busy, so the drain must leave it
        services.job_store.create(JobRecord(id="next", workflow=fake_runtime.workflow()))
        services.queue.put("next", 1)

    code = _sigterm_while_running(services, proc, tmp_path, "short", then=another_job)
    assert code == 0, (tmp_path / "worker.log").read_text()
    assert services.job_store.get("short").status is JobStatus.SUCCEEDED
    assert services.job_store.get("next").status is JobStatus.QUEUED  # no new work after the signal
    assert "JobsCompleted" in _metric_names(settings, services)


def test_cli_worker_sigterm_while_idle_exits_0(settings: Settings, services: Services,
                                               moto_endpoint: LocalAwsEndpoint, tmp_path: Path) -> None:
    proc = _start_worker(settings, moto_endpoint, tmp_path, grace_s=5,
                         command=["-m", "comfyd", "-v", "worker", "--poll", "1"])
    _wait(lambda: "consuming" in (tmp_path / "worker.log").read_text() or proc.poll() is not None, 120,
          "the worker to start")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, (tmp_path / "worker.log").read_text()
