"""The holder's lease on a running job, against the local AWS endpoint: duplicates of a job whose
holder heartbeats are never run, a silent holder is taken over only after its lease lapsed (by
exactly one worker), and a holder whose record was taken over or ended elsewhere stops.

Workers run in threads with the fast fake executor; `Worker.heartbeat.stop()` makes a holder
silent (no lease renewals, no visibility extensions) while its run goes on, as a hung or
partitioned worker would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from comfyd.backends.aws.init import ensure_queues
from comfyd.backends.aws.session import AwsSession
from comfyd.engine.interfaces import JobRecord, JobStatus, QueueItem
from comfyd.runtime import Services, build_services
from comfyd.settings import Settings
from comfyd.worker import Worker


@pytest.fixture
def services(settings: Settings, provisioned, recording) -> Iterator[Services]:
    built = build_services(settings)
    yield recording(built)
    built.close()


class Running:
    """Workers looping in threads; stopped at the end of the test."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self, worker: Worker, max_jobs: int | None = 1) -> threading.Thread:
        thread = threading.Thread(target=worker.run, args=(self.stop, max_jobs), daemon=True)
        thread.start()
        self.threads.append(thread)
        return thread

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


@pytest.fixture
def running() -> Iterator[Running]:
    pool = Running()
    yield pool
    pool.join()


def _worker(settings: Settings, services: Services, fake_runtime, visibility_s: float = 2) -> Worker:
    return Worker(settings, services, fake_runtime.build(settings), visibility_s=visibility_s, poll_s=1)


def _submit(services: Services, job_id: str, workflow: dict) -> None:
    assert services.job_store.create(JobRecord(id=job_id, workflow=workflow))
    services.queue.put(job_id, 1)


def _held_by(services: Services, job_id: str, worker_id: str, beat: float, lease_s: float | None = None) -> None:
    """The record as a worker that claimed the job (its claim at `beat`) leaves it."""
    assert services.job_store.transition(job_id, {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id=worker_id,
                                         attempts=1, started_at=beat, heartbeat_at=beat, lease_s=lease_s)


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _receive(services: Services) -> QueueItem:
    return _wait(lambda: services.queue.get(timeout=0.2), 10, "a message")


def _s3_keys(services: Services, settings: Settings, job_id: str) -> list[str]:
    s3 = services.output_store.aws.client("s3")
    found = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{settings.s3_prefix}/{job_id}/")
    return [o["Key"] for o in found.get("Contents", [])]


def _messages_left(services: Services) -> int:
    """Messages of the base band still in SQS, visible or held by a worker."""
    reply = services.queue.aws.client("sqs").get_queue_attributes(
        QueueUrl=services.queue.url(2),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in reply["Attributes"].values())


def _status(services: Services, job_id: str) -> JobStatus | None:
    job = services.job_store.get(job_id)
    return job.status if job is not None else None


# ---- duplicates of a job whose holder is alive -------------------------------------------------


def test_a_duplicate_delivered_again_while_the_holder_beats_is_not_run(
        settings: Settings, services: Services, running: Running, fake_runtime) -> None:
    _submit(services, "dup", fake_runtime.workflow(seconds=5))
    holder = _worker(settings, services, fake_runtime, visibility_s=2)  # lease 2 s
    running.start(holder)
    _wait(lambda: _status(services, "dup") is JobStatus.RUNNING, 10, "the holder to claim the job")
    services.queue.put("dup", 1)  # a second message for it (a sweeper's spare send, an SQS duplicate)
    services.queue.nack(_receive(services))  # delivered once already...
    spare = _receive(services)
    assert spare.receive_count == 2  # ...so it looks like the redelivery of a dead holder's message
    claimed_at = services.job_store.get("dup").started_at
    _wait(lambda: time.time() - claimed_at > holder.lease_s + 0.5, 10, "the claim to be older than a lease")

    other = _worker(settings, services, fake_runtime, visibility_s=2)
    other.handle(spare)  # only the heartbeats keep the holder's lease current now

    assert other.stats.duplicates == 1 and other.stats.taken_over == 0
    job = services.job_store.get("dup")
    assert job.status is JobStatus.RUNNING and job.worker_id == holder.worker_id
    assert job.heartbeat_at > claimed_at + holder.lease_s
    _wait(lambda: _status(services, "dup") is JobStatus.SUCCEEDED, 15, "the holder to finish")
    # The spare is dropped at its first delivery after the end.
    late = _receive(services)
    other.handle(late)
    assert _messages_left(services) == 0
    assert fake_runtime.executions(settings.output_dir, "dup") == 1
    assert holder.stats.succeeded == 1 and holder.stats.lost == 0
    assert services.notifier.completed("dup") == ["succeeded"]


@pytest.mark.parametrize(("beat_age_s", "recorded_lease_s", "taken_over"), [
    (1.0, None, False),  # within the reader's lease (5 s)
    (30.0, None, True),  # lapsed
    (30.0, 120.0, False),  # the holder beats less often and said so: its longer lease counts
])
def test_take_over_only_once_the_longer_lease_lapsed(beat_age_s: float, recorded_lease_s: float | None,
                                                     taken_over: bool, settings: Settings, services: Services,
                                                     fake_runtime) -> None:
    _submit(services, "j", fake_runtime.workflow())
    _held_by(services, "j", "holder", time.time() - beat_age_s, recorded_lease_s)
    worker = _worker(settings, services, fake_runtime, visibility_s=5)
    worker.handle(_receive(services))
    job = services.job_store.get("j")
    if taken_over:
        assert worker.stats.taken_over == 1 and job.status is JobStatus.SUCCEEDED
        assert job.worker_id == worker.worker_id and job.attempts == 2
    else:
        assert worker.stats.duplicates == 1 and job.status is JobStatus.RUNNING and job.worker_id == "holder"
    assert fake_runtime.executions(settings.output_dir, "j") == int(taken_over)


# ---- a silent holder ---------------------------------------------------------------------------


def test_a_holder_that_stops_beating_is_taken_over_after_its_lease(
        settings: Settings, services: Services, running: Running, fake_runtime) -> None:
    _submit(services, "silent", fake_runtime.workflow(seconds=6))
    first = _worker(settings, services, fake_runtime, visibility_s=1)  # lease 1 s
    running.start(first)
    _wait(lambda: first.heartbeat is not None and first.heartbeat.lease_beats >= 1, 10, "a lease renewal")
    first.heartbeat.stop()  # hung or cut off: no renewals, no extensions; its run goes on
    last_beat = services.job_store.get("silent").heartbeat_at
    second = _worker(settings, services, fake_runtime, visibility_s=1)
    running.start(second)

    def taken_over() -> bool:
        job = services.job_store.get("silent")
        return job.status is JobStatus.SUCCEEDED and job.worker_id == second.worker_id

    _wait(taken_over, 30, "the second worker to take the job over and finish it")
    running.join()
    job = services.job_store.get("silent")
    assert second.stats.taken_over == 1 and second.stats.succeeded == 1
    assert job.started_at - last_beat >= second.lease_s  # not before the lease lapsed
    assert job.attempts == 2
    # The silent holder was not dead: its run ended, but it found the job was not its own any
    # more and stored, wrote and announced nothing.
    assert first.stats.lost == 1 and first.stats.succeeded == 0
    assert fake_runtime.executions(settings.output_dir, "silent") == 2
    assert len(_s3_keys(services, settings, "silent")) == 1 and len(job.output_keys) == 1
    assert services.notifier.completed("silent") == ["succeeded"]
    assert _messages_left(services) == 0


def test_two_workers_racing_to_take_over_a_stale_job_one_wins(settings: Settings, services: Services,
                                                             fake_runtime) -> None:
    _submit(services, "stale", fake_runtime.workflow(seconds=0.5))
    services.queue.put("stale", 1)
    _held_by(services, "stale", "dead", time.time() - 600)
    items = [_receive(services), _receive(services)]  # one message each, at the same moment
    workers = [_worker(settings, services, fake_runtime) for _ in items]
    barrier = threading.Barrier(len(workers))

    def handle(worker: Worker, item: QueueItem) -> None:
        barrier.wait()
        worker.handle(item)

    threads = [threading.Thread(target=handle, args=pair) for pair in zip(workers, items, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sum(w.stats.taken_over for w in workers) == 1
    assert sum(w.stats.succeeded for w in workers) == 1
    assert fake_runtime.executions(settings.output_dir, "stale") == 1
    job = services.job_store.get("stale")
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 2
    assert services.notifier.completed("stale") == ["succeeded"]


# ---- a holder that lost its record -------------------------------------------------------------


def _take_over_as(services: Services, job_id: str, worker_id: str) -> None:
    """What another worker does once it judged the holder dead: take over, then claim."""
    def taken() -> bool:
        job = services.job_store.get(job_id)
        return services.job_store.take_over(job_id, job.worker_id, job.heartbeat_at)

    _wait(taken, 10, "the take-over write")  # retried: the live holder's beats change the record
    assert services.job_store.transition(job_id, {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id=worker_id,
                                         started_at=time.time(), heartbeat_at=time.time())


@pytest.mark.parametrize("fate", ["taken-over", "ended-elsewhere"])
def test_a_holder_whose_record_is_not_its_own_any_more_stops(fate: str, settings: Settings, services: Services,
                                                            running: Running, fake_runtime) -> None:
    _submit(services, "gone", fake_runtime.workflow(seconds=30))
    holder = _worker(settings, services, fake_runtime, visibility_s=1)  # renews every ~0.33 s
    thread = running.start(holder)
    _wait(lambda: _status(services, "gone") is JobStatus.RUNNING, 10, "the holder to claim the job")
    if fate == "taken-over":
        _take_over_as(services, "gone", "other")
    else:  # an operator (or a dead-letter sweep) ended it
        assert services.job_store.transition("gone", {JobStatus.RUNNING}, JobStatus.FAILED,
                                             finished_at=time.time(), error={"type": "operator"})
    lost_at = time.monotonic()
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - lost_at < 5  # at its next renewal, not after 30 s
    assert holder.stats.lost == 1 and holder.stats.succeeded == holder.stats.failed == 0
    job = services.job_store.get("gone")
    if fate == "taken-over":
        assert job.status is JobStatus.RUNNING and job.worker_id == "other"
        assert _messages_left(services) == 1  # put back, not deleted: the new holder may yet die
    else:
        assert job.status is JobStatus.FAILED and job.error == {"type": "operator"}
        assert _messages_left(services) == 0
    assert _s3_keys(services, settings, "gone") == [] and job.output_keys == []
    assert services.notifier.completed("gone") == []  # the stopped run announced no end


# ---- dead letters -----------------------------------------------------------------------------


@pytest.mark.parametrize("holder_alive", [True, False])
def test_a_dead_letter_fails_a_running_job_only_once_its_lease_lapsed(
        holder_alive: bool, settings: Settings, services: Services, fake_runtime, aws: AwsSession) -> None:
    ensure_queues(aws, settings.sqs_queue, max_receives=1)
    _submit(services, "dl", fake_runtime.workflow())
    _held_by(services, "dl", "holder", time.time() if holder_alive else time.time() - 600)
    services.queue.nack(_receive(services))  # nacked until SQS gave up on it
    assert services.queue.get(timeout=1) is None  # now in the DLQ
    worker = _worker(settings, services, fake_runtime, visibility_s=5)
    assert worker.fail_dead_letters() == int(not holder_alive)
    job = services.job_store.get("dl")
    if holder_alive:  # a spare message of a job a live worker runs: left in the DLQ for later
        assert job.status is JobStatus.RUNNING and job.worker_id == "holder"
        assert services.notifier.completed("dl") == []
    else:
        assert job.status is JobStatus.FAILED and job.error["type"] == "dead_letter"
        assert services.notifier.completed("dl") == ["failed"]
