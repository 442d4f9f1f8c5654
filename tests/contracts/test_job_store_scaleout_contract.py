"""JobStore contract, scale-out part: cancel requests and the unsent-job sweep, same on SQLite and DynamoDB."""

from __future__ import annotations

import threading
import time

from comfyd.engine.interfaces import JobRecord, JobStatus


def _job(job_id: str, **fields) -> JobRecord:
    fields.setdefault("created_at", time.time())
    return JobRecord(id=job_id, workflow={"1": {"class_type": "X", "inputs": {}}}, **fields)


def test_cancel_request_only_while_queued_or_running(job_store) -> None:
    for job_id in ("queued", "running", "done"):
        job_store.create(_job(job_id))
    job_store.transition("running", {JobStatus.QUEUED}, JobStatus.RUNNING)
    job_store.transition("done", {JobStatus.QUEUED}, JobStatus.SUCCEEDED, finished_at=time.time())
    assert job_store.cancel_requested("running") is None
    assert job_store.request_cancel("running", "interrupted") is True
    assert job_store.request_cancel("queued", "canceled") is True
    assert job_store.request_cancel("done", "canceled") is False  # a finished job is never touched
    assert job_store.request_cancel("missing", "canceled") is False
    assert job_store.cancel_requested("running") == "interrupted"
    assert job_store.cancel_requested("queued") == "canceled"
    assert job_store.cancel_requested("done") is None
    assert job_store.cancel_requested("missing") is None
    running = job_store.get("running")
    assert running.status is JobStatus.RUNNING and running.cancel_requested == "interrupted"
    assert job_store.get("done").cancel_requested is None


def test_cancel_request_loses_to_a_finish(job_store) -> None:
    job_store.create(_job("a"))
    job_store.transition("a", {JobStatus.QUEUED}, JobStatus.RUNNING)
    barrier = threading.Barrier(2)
    results: dict[str, bool] = {}

    def finish() -> None:
        barrier.wait()
        results["finish"] = job_store.transition("a", {JobStatus.RUNNING}, JobStatus.SUCCEEDED)

    def cancel() -> None:
        barrier.wait()
        results["cancel"] = job_store.request_cancel("a", "canceled")

    threads = [threading.Thread(target=finish), threading.Thread(target=cancel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    job = job_store.get("a")
    assert results["finish"] is True and job.status is JobStatus.SUCCEEDED
    # Either order is fine; a cancel request that came first does not change the finish.
    assert job.cancel_requested == ("canceled" if results["cancel"] else None)


def test_list_unsent_oldest_first(job_store) -> None:
    now = time.time()
    job_store.create(_job("old-2", created_at=now - 200))
    job_store.create(_job("old-1", created_at=now - 300))
    job_store.create(_job("sent", created_at=now - 400))
    job_store.update("sent", enqueued_at=now - 399)
    job_store.create(_job("running", created_at=now - 500))
    job_store.transition("running", {JobStatus.QUEUED}, JobStatus.RUNNING)
    job_store.create(_job("fresh", created_at=now - 5))
    assert [j.id for j in job_store.list_unsent(now - 100)] == ["old-1", "old-2"]
    assert [j.id for j in job_store.list_unsent(now - 100, limit=1)] == ["old-1"]
    assert [j.id for j in job_store.list_unsent(now)] == ["old-1", "old-2", "fresh"]
    assert job_store.list_unsent(now - 1000) == []


def test_claim_requeue_is_a_lease(job_store) -> None:
    now = time.time()
    job_store.create(_job("orphan", created_at=now - 300))
    assert job_store.claim_requeue("orphan", now, 60) is True
    assert job_store.claim_requeue("orphan", now + 1, 60) is False  # held by the first claim
    assert job_store.get("orphan").requeue_claimed_at == now
    assert job_store.claim_requeue("orphan", now + 61, 60) is True  # that claimer died: lease lapsed
    job_store.update("orphan", enqueued_at=now + 62)
    assert job_store.claim_requeue("orphan", now + 200, 60) is False  # sent: nothing to claim
    assert job_store.list_unsent(now) == []
    job_store.create(_job("started", created_at=now - 300))
    job_store.transition("started", {JobStatus.QUEUED}, JobStatus.RUNNING)
    assert job_store.claim_requeue("started", now, 60) is False
    assert job_store.claim_requeue("missing", now, 60) is False


def test_concurrent_claims_one_wins(job_store) -> None:
    now = time.time()
    job_store.create(_job("orphan", created_at=now - 300))
    barrier = threading.Barrier(4)
    wins: list[int] = []

    def claim(index: int) -> None:
        barrier.wait()
        if job_store.claim_requeue("orphan", now + index * 0.001, 60):
            wins.append(index)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
