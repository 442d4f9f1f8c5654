"""run_job writes only while its worker holds the job: a run whose record was taken over by
another worker, or ended elsewhere, uploads, writes and announces nothing."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from comfyd.backends.prometheus import PrometheusMetrics
from comfyd.backends.sqlite_store import SqliteDatabase, SqliteJobStore
from comfyd.engine.interfaces import JobRecord, JobStatus, StoredOutput
from comfyd.engine.jobs import JobControl, run_job


class RecordingOutputs:
    def __init__(self) -> None:
        self.puts: list[str] = []

    def put(self, job_id: str, filename: str, data: bytes, content_type: str = "image/png",
            metadata: dict[str, str] | None = None) -> StoredOutput:
        self.puts.append(filename)
        return StoredOutput(key=f"{job_id}/{filename}", url=f"https://cdn.example/{job_id}/{filename}")

    def get(self, key: str) -> bytes:
        raise KeyError(key)

    def url(self, key: str) -> str | None:
        return None


class RecordingNotifier:
    def __init__(self) -> None:
        self.events: list[str] = []

    def publish(self, event: str, payload: dict, attributes: dict | None = None) -> None:
        self.events.append(event)


@dataclasses.dataclass
class Backends:
    job_store: SqliteJobStore
    output_store: RecordingOutputs
    metrics: PrometheusMetrics
    notifier: RecordingNotifier


@pytest.fixture
def backends(tmp_path: Path) -> Backends:
    db = SqliteDatabase(tmp_path / "jobs.db")
    yield Backends(SqliteJobStore(db), RecordingOutputs(), PrometheusMetrics(), RecordingNotifier())
    db.close()


def _take_over(store: SqliteJobStore, job_id: str, new_holder: str) -> None:
    """Another worker judged this one dead: take the job over and claim it."""
    job = store.get(job_id)
    assert store.take_over(job_id, job.worker_id, job.heartbeat_at)
    assert store.transition(job_id, {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id=new_holder,
                            started_at=time.time(), heartbeat_at=time.time())


def _end_elsewhere(store: SqliteJobStore, job_id: str, new_holder: str) -> None:
    assert store.transition(job_id, {JobStatus.RUNNING}, JobStatus.FAILED, finished_at=time.time(),
                            error={"type": "operator"})


class ThenLoses:
    """Runs the job with the real executor, then the record stops being this run's (`lose`)
    before run_job writes the end: the run stalled past its lease, say."""

    def __init__(self, inner: Any, store: SqliteJobStore, lose: Any) -> None:
        self.inner, self.store, self.lose = inner, store, lose

    def execute(self, req: Any, job_id: str, listener=None, interrupt=None, extra_data=None) -> Any:
        result = self.inner.execute(req, job_id=job_id, listener=listener, interrupt=interrupt, extra_data=extra_data)
        self.lose(self.store, job_id, "other")
        return result


def _assert_nothing_written(backends: Backends, outcome: Any, events: list[tuple[str, dict]], lose: Any) -> None:
    assert outcome.skipped and outcome.status is None and outcome.retry_delay_s is None
    assert backends.output_store.puts == []
    assert "job.completed" not in backends.notifier.events
    assert not [e for e, d in events if e in ("execution_success", "execution_error")]
    assert not [d for e, d in events if e == "executing" and d.get("node") is None]
    job = backends.job_store.get("job-1")
    if lose is _take_over:
        assert job.status is JobStatus.RUNNING and job.worker_id == "other" and job.output_keys == []
    else:
        assert job.status is JobStatus.FAILED and job.error == {"type": "operator"}


@pytest.mark.parametrize("lose", [_take_over, _end_elsewhere])
@pytest.mark.parametrize("ending", ["success", "retryable error", "failure"])
def test_a_run_that_lost_its_record_writes_nothing(lose: Any, ending: str, backends: Backends, local_runtime,
                                                   workflow) -> None:
    flaky = {"success": None, "retryable error": {"fails": 9, "kind": "retryable"},
             "failure": {"fails": 9, "kind": "workflow"}}[ending]
    job = JobRecord(id="job-1", workflow=workflow(0.0, 1, "t", flaky=flaky), number=1)
    assert backends.job_store.create(job)
    runtime = dataclasses.replace(local_runtime.runtime,
                                  executor=ThenLoses(local_runtime.runtime.executor, backends.job_store, lose))
    events: list[tuple[str, dict]] = []
    outcome = run_job(job, runtime=runtime, backends=backends, settings=local_runtime.settings,
                      listener=lambda e, d: events.append((e, d)), worker_id="w1")
    _assert_nothing_written(backends, outcome, events, lose)


def test_a_run_stopped_as_lost_writes_nothing(backends: Backends, local_runtime, workflow) -> None:
    # What the worker's heartbeat does when its lease renewal is refused.
    job = JobRecord(id="job-1", workflow=workflow(5.0, 50), number=1)
    assert backends.job_store.create(job)
    control = JobControl()

    def heartbeat_refused() -> None:
        _wait_for(lambda: control.held.is_set())
        _take_over(backends.job_store, "job-1", "other")
        control.stop("lost")

    thread = threading.Thread(target=heartbeat_refused)
    thread.start()
    events: list[tuple[str, dict]] = []
    started = time.monotonic()
    outcome = run_job(job, runtime=local_runtime.runtime, backends=backends, settings=local_runtime.settings,
                      listener=lambda e, d: events.append((e, d)), control=control, worker_id="w1")
    thread.join()
    assert time.monotonic() - started < 4  # stopped, not run to the end
    assert not control.held.is_set()
    _assert_nothing_written(backends, outcome, events, _take_over)


def test_the_claim_is_the_first_heartbeat(backends: Backends, local_runtime, workflow) -> None:
    seen: list[JobRecord] = []

    class Peek:
        def execute(self, req: Any, job_id: str, **kw: Any) -> Any:
            seen.append(backends.job_store.get(job_id))
            return local_runtime.runtime.executor.execute(req, job_id=job_id, **kw)

    job = JobRecord(id="job-1", workflow=workflow(), number=1)
    assert backends.job_store.create(job)
    runtime = dataclasses.replace(local_runtime.runtime, executor=Peek())
    outcome = run_job(job, runtime=runtime, backends=backends, settings=local_runtime.settings,
                      worker_id="w1", lease_s=42.0)
    assert outcome.status is JobStatus.SUCCEEDED
    [running] = seen
    assert running.worker_id == "w1" and running.heartbeat_at == running.started_at and running.lease_s == 42.0
    assert backends.job_store.get("job-1").heartbeat_at >= running.heartbeat_at  # renewed before the upload


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
