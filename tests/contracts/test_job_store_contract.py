"""JobStore contract: SQLite and DynamoDB behave the same for everything the job layer relies on."""

from __future__ import annotations

import threading
import time

import pytest

from comfyd.engine.interfaces import JobRecord, JobStatus, JobStore


def _job(job_id: str, **fields) -> JobRecord:
    fields.setdefault("created_at", time.time())
    return JobRecord(id=job_id, workflow={"3": {"class_type": "KSampler", "inputs": {"seed": 1}}}, **fields)


def test_is_a_job_store(job_store) -> None:
    assert isinstance(job_store, JobStore)


def test_create_get_round_trip(job_store) -> None:
    job = _job("a", priority=5, number=2, client_id="c", extra_data={"k": [1, 2.5, None]},
               node_timings={"3": 0.25}, outputs={"9": {"images": [{"filename": "x.png"}]}})
    assert job_store.create(job) is True
    got = job_store.get("a")
    assert got is not None
    for name in ("id", "workflow", "status", "priority", "number", "client_id", "extra_data", "node_timings",
                 "outputs", "created_at", "attempts", "error"):
        assert getattr(got, name) == getattr(job, name), name
    assert isinstance(got.status, JobStatus)


def test_create_is_insert_only(job_store) -> None:
    assert job_store.create(_job("a"))
    assert job_store.create(_job("a", priority=9)) is False
    assert job_store.get("a").priority == 1


def test_absent_is_none(job_store) -> None:
    assert job_store.get("missing") is None


def test_transition_only_from_expected(job_store) -> None:
    job_store.create(_job("a"))
    assert job_store.transition("a", {JobStatus.RUNNING}, JobStatus.SUCCEEDED) is False
    assert job_store.transition("a", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="w", attempts=1) is True
    got = job_store.get("a")
    assert (got.status, got.worker_id, got.attempts) == (JobStatus.RUNNING, "w", 1)
    assert job_store.transition("a", {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.FAILED,
                                error={"type": "x", "message": "m"}) is True
    assert job_store.get("a").error == {"type": "x", "message": "m"}
    assert job_store.transition("missing", {JobStatus.QUEUED}, JobStatus.RUNNING) is False
    assert job_store.get("missing") is None


def test_concurrent_finishers_one_wins(job_store) -> None:
    job_store.create(_job("a"))
    job_store.transition("a", {JobStatus.QUEUED}, JobStatus.RUNNING)
    wins = []
    barrier = threading.Barrier(4)

    def finish(name: str) -> None:
        barrier.wait()
        if job_store.transition("a", {JobStatus.RUNNING}, JobStatus.SUCCEEDED, worker_id=name):
            wins.append(name)

    threads = [threading.Thread(target=finish, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    assert job_store.get("a").worker_id == wins[0]


def test_update_without_status_change(job_store) -> None:
    job_store.create(_job("a"))
    job_store.update("a", progress={"value": 2, "max": 10, "node": "3"})
    got = job_store.get("a")
    assert got.progress == {"value": 2, "max": 10, "node": "3"} and got.status is JobStatus.QUEUED
    job_store.update("missing", progress={"value": 1})
    assert job_store.get("missing") is None
    with pytest.raises(ValueError):
        job_store.update("a", status=JobStatus.FAILED)
    with pytest.raises(ValueError):
        job_store.update("a", no_such_field=1)


def test_expired_is_gone(job_store) -> None:
    job_store.create(_job("old", expires_at=time.time() - 5))
    job_store.create(_job("new"))
    assert job_store.get("old") is None
    assert [j.id for j in job_store.list()] == ["new"]


def test_list_newest_first_and_filtered(job_store) -> None:
    now = time.time()
    for i in range(5):
        job_store.create(_job(f"j{i}", created_at=now + i))
    job_store.transition("j1", {JobStatus.QUEUED}, JobStatus.SUCCEEDED)
    job_store.transition("j3", {JobStatus.QUEUED}, JobStatus.RUNNING)
    assert [j.id for j in job_store.list()] == ["j4", "j3", "j2", "j1", "j0"]
    assert [j.id for j in job_store.list(limit=2)] == ["j4", "j3"]
    assert [j.id for j in job_store.list({JobStatus.QUEUED})] == ["j4", "j2", "j0"]
    assert [j.id for j in job_store.list({JobStatus.SUCCEEDED, JobStatus.RUNNING})] == ["j3", "j1"]


def test_delete(job_store) -> None:
    job_store.create(_job("a"))
    job_store.delete("a")
    assert job_store.get("a") is None
    job_store.delete("a")  # deleting twice is fine


def test_large_workflow(job_store) -> None:
    workflow = {str(i): {"class_type": "CLIPTextEncode", "inputs": {"text": "word " * 2000}} for i in range(50)}
    job = JobRecord(id="big", workflow=workflow)  # ~500 KB: over DynamoDB's item limit on its own
    assert job_store.create(job)
    assert job_store.get("big").workflow == workflow
