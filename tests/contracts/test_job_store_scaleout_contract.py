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


# ---- the running holder's lease (heartbeat, take-over, holder-conditional ends) ---------------


def _running(job_store, job_id: str, worker_id: str = "w1", beat: float | None = None) -> float:
    """A job claimed by `worker_id`, its claim as the first heartbeat; returns that beat."""
    beat = time.time() if beat is None else beat
    job_store.create(_job(job_id))
    assert job_store.transition(job_id, {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id=worker_id,
                                started_at=beat, heartbeat_at=beat, lease_s=30.0)
    return beat


def test_heartbeat_only_while_running_and_held(job_store) -> None:
    claimed = _running(job_store, "a")
    assert job_store.heartbeat("a", "w1", claimed + 5) is True
    job = job_store.get("a")
    assert job.heartbeat_at == claimed + 5 and job.lease_s == 30.0 and job.status is JobStatus.RUNNING
    assert job_store.heartbeat("a", "w2", claimed + 6) is False  # not the holder
    assert job_store.get("a").heartbeat_at == claimed + 5
    job_store.create(_job("queued"))
    assert job_store.heartbeat("queued", "w1", claimed) is False
    assert job_store.heartbeat("missing", "w1", claimed) is False
    assert job_store.transition("a", {JobStatus.RUNNING}, JobStatus.SUCCEEDED, finished_at=claimed + 7)
    assert job_store.heartbeat("a", "w1", claimed + 8) is False  # ended: the run must stop
    assert job_store.get("a").status is JobStatus.SUCCEEDED


def test_transition_with_a_holder_needs_that_holder(job_store) -> None:
    _running(job_store, "a")
    assert job_store.transition("a", {JobStatus.RUNNING}, JobStatus.SUCCEEDED, holder="w2") is False
    assert job_store.get("a").status is JobStatus.RUNNING
    assert job_store.transition("a", {JobStatus.RUNNING}, JobStatus.SUCCEEDED, holder="w1",
                                finished_at=time.time()) is True
    assert job_store.get("a").status is JobStatus.SUCCEEDED
    job_store.create(_job("unheld"))  # queued, nobody's: a holder condition fails, none passes
    assert job_store.transition("unheld", {JobStatus.QUEUED}, JobStatus.CANCELED, holder="w1") is False
    assert job_store.transition("unheld", {JobStatus.QUEUED}, JobStatus.CANCELED) is True


def test_take_over_needs_the_holder_and_heartbeat_seen(job_store) -> None:
    beat = _running(job_store, "a", beat=time.time() - 300)
    assert job_store.take_over("a", "w2", beat) is False  # another holder than the one seen
    assert job_store.take_over("a", "w1", beat - 1) is False  # it beat since
    assert job_store.take_over("a", "w1", None) is False
    assert job_store.get("a").status is JobStatus.RUNNING
    assert job_store.take_over("a", "w1", beat) is True
    job = job_store.get("a")
    assert job.status is JobStatus.QUEUED
    assert (job.worker_id, job.heartbeat_at, job.lease_s) == (None, None, None)
    assert job_store.take_over("a", "w1", beat) is False  # done once
    assert job_store.heartbeat("a", "w1", time.time()) is False  # the old holder learns it lost the job
    assert job_store.take_over("missing", "w1", beat) is False


def test_take_over_of_a_holder_that_never_beat(job_store) -> None:
    job_store.create(_job("legacy"))  # running from before heartbeats existed: no worker, no beat
    assert job_store.transition("legacy", {JobStatus.QUEUED}, JobStatus.RUNNING)
    assert job_store.take_over("legacy", None, None) is True
    assert job_store.get("legacy").status is JobStatus.QUEUED
    job_store.create(_job("done"))
    assert job_store.transition("done", {JobStatus.QUEUED}, JobStatus.SUCCEEDED)
    assert job_store.take_over("done", None, None) is False  # only running jobs


def _race(*calls) -> list[bool]:
    barrier = threading.Barrier(len(calls))
    results: list[bool] = [False] * len(calls)

    def run(index: int) -> None:
        barrier.wait()
        results[index] = calls[index]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_take_overs_one_wins(job_store) -> None:
    beat = _running(job_store, "stale", beat=time.time() - 300)
    results = _race(*[lambda: job_store.take_over("stale", "w1", beat) for _ in range(4)])
    assert results.count(True) == 1
    assert job_store.get("stale").status is JobStatus.QUEUED


def test_a_heartbeat_racing_a_take_over_one_wins(job_store) -> None:
    for attempt in range(3):
        job_id = f"j{attempt}"
        beat = _running(job_store, job_id, beat=time.time() - 300)
        beat_ok, taken = _race(lambda j=job_id: job_store.heartbeat(j, "w1", time.time()),
                               lambda j=job_id, b=beat: job_store.take_over(j, "w1", b))
        assert beat_ok != taken  # the holder keeps the job, or learns it lost it: never both
        job = job_store.get(job_id)
        assert job.status is (JobStatus.QUEUED if taken else JobStatus.RUNNING)
