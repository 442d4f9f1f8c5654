"""run_job, the one-job contract every worker (local, SQS, Lambda) relies on, without a server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from comfyd.backends.prometheus import PrometheusMetrics
from comfyd.backends.sqlite_store import SqliteDatabase, SqliteJobStore
from comfyd.engine.interfaces import JobRecord, JobStatus, StoredOutput
from comfyd.engine.jobs import JobControl, run_job


@dataclasses.dataclass
class Backends:
    job_store: Any
    output_store: Any
    metrics: Any
    notifier: Any


class RecordingOutputs:
    def __init__(self, fail: Exception | None = None) -> None:
        self.puts: list[tuple[str, str, bytes]] = []
        self.metadata: list[dict[str, str] | None] = []
        self.fail = fail

    def put(self, job_id: str, filename: str, data: bytes, content_type: str = "image/png",
            metadata: dict[str, str] | None = None) -> StoredOutput:
        if self.fail is not None:
            raise self.fail
        self.puts.append((job_id, filename, data))
        self.metadata.append(metadata)
        return StoredOutput(key=f"{job_id}/{filename}", url=f"https://cdn.example/{job_id}/{filename}")

    def get(self, key: str) -> bytes:
        raise KeyError(key)

    def url(self, key: str) -> str | None:
        return None


class RecordingNotifier:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict, dict]] = []

    def publish(self, event: str, payload: dict, attributes: dict | None = None) -> None:
        self.events.append((event, payload, attributes or {}))


@pytest.fixture
def backends(tmp_path: Path) -> Backends:
    db = SqliteDatabase(tmp_path / "jobs.db")
    yield Backends(SqliteJobStore(db), RecordingOutputs(), PrometheusMetrics(), RecordingNotifier())
    db.close()


def queued(backends: Backends, workflow: dict, job_id: str = "job-1", **fields: Any) -> JobRecord:
    job = JobRecord(id=job_id, workflow=workflow, number=1, **fields)
    assert backends.job_store.create(job)
    return job


def test_success_stores_outputs_then_state_then_announces(backends: Backends, local_runtime, workflow) -> None:
    events: list[tuple[str, dict]] = []
    job = queued(backends, workflow(0.0, 2), extra_data={"webhook": "https://hooks.example/x"})
    outcome = run_job(job, runtime=local_runtime.runtime, backends=backends, settings=local_runtime.settings,
                      listener=lambda e, d: events.append((e, d)), worker_id="w1")
    assert outcome.status is JobStatus.SUCCEEDED and outcome.retry_delay_s is None and not outcome.skipped
    stored = backends.job_store.get("job-1")
    assert stored.status is JobStatus.SUCCEEDED and stored.worker_id == "w1" and stored.attempts == 1
    [(job_id, filename, data)] = backends.output_store.puts
    assert job_id == "job-1" and data.startswith(b"\x89PNG")
    assert stored.output_keys == [f"job-1/{filename}"] and stored.output_urls == []  # keys, never URLs
    assert set(stored.node_timings) == {"3", "9"}
    assert [m[0] for m in stored.messages] == ["execution_start", "execution_cached", "execution_success"]
    notified = [e for e, _, _ in backends.notifier.events]
    assert notified[0] == "job.started" and notified[-1] == "job.completed"
    assert set(notified[1:-1]) == {"job.logs", "job.output"}  # node starts and UI outputs, while running
    assert backends.output_store.metadata[0]["job_id"] == "job-1"
    assert len(backends.output_store.metadata[0]["workflow_sha256"]) == 64
    assert backends.notifier.events[-1][2]["webhook"] == "https://hooks.example/x"
    assert backends.notifier.events[-1][1]["status"] == "succeeded"
    assert [e for e, _ in events][-2:] == ["execution_success", "executing"] and events[-1][1]["node"] is None
    assert 'comfyd_jobs_completed_total{status="succeeded"} 1' in backends.metrics.render()


def test_a_job_that_is_not_queued_is_skipped(backends: Backends, local_runtime, workflow) -> None:
    job = queued(backends, workflow(), status=JobStatus.RUNNING)
    outcome = run_job(job, runtime=local_runtime.runtime, backends=backends, settings=local_runtime.settings)
    assert outcome.skipped and outcome.status is None
    assert local_runtime.recorder.runs == []


def test_retryable_error_requeues_with_exponential_backoff(backends: Backends, local_runtime, workflow) -> None:
    job = queued(backends, workflow(0.0, 1, "r", flaky={"fails": 9, "kind": "retryable"}))
    delays = []
    for _ in range(3):
        outcome = run_job(backends.job_store.get("job-1"), runtime=local_runtime.runtime, backends=backends,
                          settings=local_runtime.settings)
        if outcome.retry_delay_s is None:
            break
        assert backends.job_store.get("job-1").status is JobStatus.QUEUED
        delays.append(outcome.retry_delay_s)
    assert delays == [0.5, 1.0]  # retry_backoff_s=0.5, retry_attempts=2
    assert outcome.status is JobStatus.FAILED and backends.job_store.get(job.id).attempts == 3


def test_output_store_failure_is_retried(backends: Backends, local_runtime, workflow) -> None:
    backends.output_store.fail = OSError("SlowDown: please reduce your request rate")
    job = queued(backends, workflow())
    outcome = run_job(job, runtime=local_runtime.runtime, backends=backends, settings=local_runtime.settings)
    assert outcome.retry_delay_s == 0.5 and backends.job_store.get("job-1").status is JobStatus.QUEUED


def test_cancel_and_shutdown_reasons(backends: Backends, local_runtime, workflow) -> None:
    job = queued(backends, workflow(5.0, 50))
    control = JobControl()
    control.stop("canceled")
    outcome = run_job(job, runtime=local_runtime.runtime, backends=backends, settings=local_runtime.settings,
                      control=control)
    assert outcome.status is JobStatus.CANCELED
    other = queued(backends, workflow(5.0, 50), job_id="job-2")
    control = JobControl()
    control.stop("shutdown")
    outcome = run_job(other, runtime=local_runtime.runtime, backends=backends, settings=local_runtime.settings,
                      control=control)
    assert outcome.retry_delay_s == 0.0 and backends.job_store.get("job-2").status is JobStatus.QUEUED
    assert backends.job_store.get("job-2").attempts == 0  # a shutdown does not use up a retry


class PreviewingExecutor:
    """Stands in for the Executor: reports two sampler steps with x0 latents, then succeeds."""

    def execute(self, req: Any, job_id: str, listener=None, interrupt=None, extra_data=None) -> Any:
        import numpy as np

        for step in (1, 2):
            latent = np.full((1, 4, 8, 8), 0.5 * step, dtype=np.float32)
            listener("progress", {"value": step, "max": 2, "node": "3", "prompt_id": job_id, "preview": latent})
        listener("execution_success", {"prompt_id": job_id})
        return dataclasses.make_dataclass("R", ["status", "outputs", "node_timings", "error"])("success", {}, {}, None)


@pytest.mark.parametrize("method", ["latent2rgb", "none"])
def test_step_previews_become_jpeg_frames_when_asked_for(backends: Backends, local_runtime, workflow,
                                                         method: str) -> None:
    runtime = dataclasses.replace(local_runtime.runtime, executor=PreviewingExecutor())
    events: list[tuple[str, dict]] = []
    job = queued(backends, workflow(), extra_data={"preview_method": method})
    run_job(job, runtime=runtime, backends=backends, settings=local_runtime.settings,
            listener=lambda e, d: events.append((e, d)))
    progress = [d for e, d in events if e == "progress"]
    assert len(progress) == 2 and all("preview" not in d for d in progress)  # latents never go out as JSON
    frames = [d for e, d in events if e == "binary_image"]
    if method == "none":
        assert frames == []
        return
    assert len(frames) == 2 and frames[0]["format"] == "JPEG" and frames[0]["node"] == "3"
    assert frames[0]["image"].startswith(b"\xff\xd8") and frames[0]["image"] != frames[1]["image"]
