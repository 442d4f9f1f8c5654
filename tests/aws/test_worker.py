"""`comfyd worker` in-process against the local AWS endpoint, with a fast fake executor."""

from __future__ import annotations

import json
import threading
import time

import pytest

from comfyd.backends.aws.init import ensure_queues
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.faultproxy import Fault, FaultProxy
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.runtime import Services, build_services
from comfyd.settings import Settings
from comfyd.worker import Heartbeat, Worker, run_worker


@pytest.fixture
def services(settings: Settings, provisioned) -> Services:
    built = build_services(settings)
    yield built
    built.close()


def _submit(services: Services, job_id: str, workflow: dict, priority: int = 1) -> None:
    assert services.job_store.create(JobRecord(id=job_id, workflow=workflow, priority=priority))
    services.queue.put(job_id, priority)


def _worker(settings: Settings, services: Services, fake_runtime, **kw) -> Worker:
    kw.setdefault("visibility_s", 5)
    kw.setdefault("poll_s", 1)
    return Worker(settings, services, fake_runtime.build(settings), **kw)


def test_runs_jobs_stores_outputs_and_deletes_messages(settings: Settings, services: Services, fake_runtime) -> None:
    for i in range(3):
        _submit(services, f"job-{i}", fake_runtime.workflow(seed=i), priority=1 + 4 * i)
    stats = run_worker(settings, services=services, runtime=fake_runtime.build(settings), poll_s=1, max_jobs=3)
    assert (stats.succeeded, stats.failed, stats.skipped) == (3, 0, 0)
    for i in range(3):
        job = services.job_store.get(f"job-{i}")
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 1 and job.worker_id
        key = f"out/job-{i}/job-{i}_00001_.png"
        assert json.loads(services.output_store.get(key)[8:]) == {"job": f"job-{i}", "seed": i}
        assert job.output_keys == [key] and job.output_urls == []
    assert services.queue.depth() == 0
    assert services.queue.get(timeout=0) is None  # deleted, not merely invisible


def test_redelivered_finished_job_is_dropped_not_rerun(settings: Settings, services: Services, fake_runtime) -> None:
    _submit(services, "done", fake_runtime.workflow())
    run_worker(settings, services=services, runtime=fake_runtime.build(settings), poll_s=1, max_jobs=1)
    services.queue.put("done", 1)  # SQS delivers it again
    stats = run_worker(settings, services=services, runtime=fake_runtime.build(settings), poll_s=1, max_jobs=1)
    assert stats.skipped == 1 and stats.succeeded == 0
    assert fake_runtime.executions(settings.output_dir, "done") == 1
    assert services.queue.get(timeout=0) is None


def test_job_of_a_dead_worker_is_taken_over(settings: Settings, services: Services, fake_runtime) -> None:
    _submit(services, "orphan", fake_runtime.workflow())
    # A worker claimed it and died: record running, message back after its visibility lapsed.
    assert services.job_store.transition("orphan", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="dead", attempts=1)
    first = services.queue.get(timeout=1)
    services.queue.nack(first)
    worker = _worker(settings, services, fake_runtime)
    stats = worker.run(threading.Event(), max_jobs=1)
    assert stats.taken_over == 1 and stats.succeeded == 1
    job = services.job_store.get("orphan")
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 2 and job.worker_id == worker.worker_id


def test_a_running_job_with_a_current_lease_is_left_to_its_holder(settings: Settings, services: Services,
                                                                   fake_runtime) -> None:
    _submit(services, "held", fake_runtime.workflow())
    services.job_store.transition("held", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="alive",
                                  started_at=time.time(), heartbeat_at=time.time())
    services.queue.nack(services.queue.get(timeout=1))  # a delivery count above 1 proves nothing
    stats = _worker(settings, services, fake_runtime).run(threading.Event(), max_jobs=1)
    assert stats.skipped == 1 and stats.duplicates == 1 and stats.taken_over == 0
    assert services.job_store.get("held").worker_id == "alive"
    assert fake_runtime.executions(settings.output_dir, "held") == 0
    assert services.queue.get(timeout=0) is None and services.queue.depth() == 0  # put back for later...
    assert _messages_held(services) == 1  # ...not deleted: the holder may yet die


def _messages_held(services: Services) -> int:
    """Messages of the base band that are in flight (received, not yet visible again)."""
    reply = services.queue.aws.client("sqs").get_queue_attributes(
        QueueUrl=services.queue.url(2), AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    return int(reply["Attributes"]["ApproximateNumberOfMessagesNotVisible"])


def test_heartbeat_keeps_a_long_job_invisible(settings: Settings, services: Services, fake_runtime) -> None:
    _submit(services, "long", fake_runtime.workflow(seconds=2.5))
    worker = _worker(settings, services, fake_runtime, visibility_s=1)
    thread = threading.Thread(target=worker.run, args=(threading.Event(), 1))
    thread.start()
    time.sleep(0.5)
    stolen = []
    while thread.is_alive():  # a second consumer never sees the job while it runs
        item = services.queue.get(timeout=0)
        if item is not None:
            stolen.append(item)
        time.sleep(0.2)
    thread.join()
    assert stolen == []
    assert worker.stats.succeeded == 1
    assert fake_runtime.executions(settings.output_dir, "long") == 1


def test_heartbeat_counts_beats() -> None:
    extended = []

    class Queue:
        def extend(self, item, seconds):
            extended.append(seconds)

    from comfyd.engine.interfaces import QueueItem

    with Heartbeat(Queue(), QueueItem("j", 1, "r"), visibility_s=0.6) as beat:
        time.sleep(0.7)
    assert beat.beats >= 2 and set(extended) == {0.6}


def test_retryable_failure_goes_back_to_the_queue(settings: Settings, services: Services, fake_runtime) -> None:
    _submit(services, "flaky", fake_runtime.workflow(fail="S3 said SlowDown", fail_times=1))
    stats = run_worker(settings, services=services, runtime=fake_runtime.build(settings), poll_s=1, max_jobs=2)
    assert stats.retried == 1 and stats.succeeded == 1
    job = services.job_store.get("flaky")
    assert job.status is JobStatus.SUCCEEDED and job.attempts == 2


def test_failed_job_is_recorded_and_acked(settings: Settings, services: Services, fake_runtime) -> None:
    _submit(services, "bad", fake_runtime.workflow(fail="division by zero"))
    stats = run_worker(settings, services=services, runtime=fake_runtime.build(settings), poll_s=1, max_jobs=1)
    assert stats.failed == 1
    job = services.job_store.get("bad")
    assert job.status is JobStatus.FAILED and job.error["message"] == "division by zero"
    assert services.queue.get(timeout=0) is None


def test_dead_letters_fail_their_jobs(settings: Settings, services: Services, fake_runtime, aws: AwsSession) -> None:
    ensure_queues(aws, settings.sqs_queue, max_receives=1)
    _submit(services, "cursed", fake_runtime.workflow())
    item = services.queue.get(timeout=1)
    services.queue.nack(item)  # the worker died on its only allowed delivery
    assert services.queue.get(timeout=1) is None  # now in the DLQ
    worker = _worker(settings, services, fake_runtime)
    assert worker.fail_dead_letters() == 1
    job = services.job_store.get("cursed")
    assert job.status is JobStatus.FAILED and job.error["type"] == "dead_letter"
    assert worker.fail_dead_letters() == 0


def test_two_workers_run_each_job_exactly_once(settings: Settings, services: Services, fake_runtime) -> None:
    for i in range(8):
        _submit(services, f"j{i}", fake_runtime.workflow(seconds=0.1, seed=i))
    stop = threading.Event()
    workers = [_worker(settings, services, fake_runtime) for _ in range(2)]
    threads = [threading.Thread(target=w.run, args=(stop,)) for w in workers]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(services.job_store.get(f"j{i}").status is JobStatus.SUCCEEDED for i in range(8)):
            break
        time.sleep(0.2)
    stop.set()
    for t in threads:
        t.join()
    assert all(fake_runtime.executions(settings.output_dir, f"j{i}") == 1 for i in range(8))
    assert sum(w.stats.succeeded for w in workers) == 8
    assert all(w.stats.succeeded > 0 for w in workers)  # both took part


def test_output_waits_for_s3_and_job_finishes_only_after(fault_proxy: FaultProxy, settings: Settings,
                                                         provisioned, fake_runtime) -> None:
    services = build_services(settings)
    services.output_store.spool._min_interval_s = services.output_store.spool._interval_s = 0.1
    try:
        _submit(services, "patient", fake_runtime.workflow())
        rule = fault_proxy.fail_for(60, "slowdown", service="s3", method="PUT")
        worker = _worker(settings, services, fake_runtime)
        thread = threading.Thread(target=worker.run, args=(threading.Event(), 1))
        thread.start()
        deadline = time.monotonic() + 10
        while services.output_store.pending() == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert services.output_store.pending() == 1  # spooled, S3 still down
        assert services.job_store.get("patient").status is JobStatus.RUNNING  # not reported finished
        rule.until = 0  # S3 is back
        thread.join(timeout=30)
        job = services.job_store.get("patient")
        assert job.status is JobStatus.SUCCEEDED
        assert services.output_store.get("out/patient/patient_00001_.png").startswith(b"\x89PNG")
        assert services.output_store.pending() == 0
    finally:
        services.close()


def test_worker_checks_region_at_start(settings: Settings) -> None:
    from comfyd.backends.aws import InvalidRegion

    with pytest.raises(InvalidRegion):
        run_worker(settings.model_copy(update={"aws_region": "moon-1"}), max_jobs=0)



@pytest.mark.parametrize("write", ["claim", "end"])
def test_an_ambiguous_job_write_still_completes_the_job_once(write: str, fault_proxy: FaultProxy, settings: Settings,
                                                             provisioned, fake_runtime, recording) -> None:
    """DynamoDB applies the claim (or the terminal write) but answers 500; the retry's condition
    fails. The worker must see its own write: the job succeeds on its first attempt with one
    job.completed event and its metrics, instead of waiting for a lease to lapse."""
    services = recording(build_services(settings))
    try:
        _submit(services, "ambiguous", fake_runtime.workflow())
        # The first write naming the new status: the claim (-> running) or the end (-> succeeded).
        status = "running" if write == "claim" else "succeeded"
        fault = fault_proxy.add(Fault("error", service="dynamodb", operation="UpdateItem", status=500,
                                      code="InternalServerError", applied=True, times=1,
                                      body_contains=f'"{status}"'))
        stats = run_worker(settings, services=services, runtime=fake_runtime.build(settings), poll_s=1, max_jobs=1)
        assert fault.hits == 1
        job = services.job_store.get("ambiguous")
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 1, (job.status, job.error)
        assert stats.succeeded == 1 and services.notifier.completed("ambiguous") == ["succeeded"]
        assert fake_runtime.executions(settings.output_dir, "ambiguous") == 1
        assert services.queue.get(timeout=0) is None  # its message was deleted
    finally:
        services.close()


@pytest.mark.parametrize("spool_here", [True, False], ids=["spooled-here", "spooled-elsewhere"])
def test_a_retry_completes_from_spooled_outputs_instead_of_rendering_again(
        spool_here: bool, fault_proxy: FaultProxy, settings: Settings, provisioned, fake_runtime) -> None:
    """S3 refuses uploads for longer than the job's budget: the attempt's output waits in the
    spool and the job goes back to the queue. Its retry waits for the spooled copy instead of
    rendering again; only a copy this host cannot see (another host's spool) is rendered again."""
    settings = settings.model_copy(update={"job_timeout_s": 1.0})  # also how long put waits for S3
    services = build_services(settings)
    services.output_store.spool._min_interval_s = services.output_store.spool._interval_s = 0.1
    try:
        _submit(services, "spooled", fake_runtime.workflow())
        outage = fault_proxy.hold("slowdown", service="s3", method="PUT")
        worker = _worker(settings, services, fake_runtime)
        assert worker.run(threading.Event(), max_jobs=1).retried == 1
        job = services.job_store.get("spooled")
        key = "out/spooled/spooled_00001_.png"
        assert job.status is JobStatus.QUEUED and job.outputs_spooled and job.output_keys == [key]
        if not spool_here:  # the copy is in a spool this worker cannot see
            for entry in services.output_store.spool.entries():
                entry.unlink()
        fault_proxy.lift(outage)
        again = _worker(settings, services, fake_runtime)
        assert again.run(threading.Event(), max_jobs=1).succeeded == 1
        job = services.job_store.get("spooled")
        assert job.status is JobStatus.SUCCEEDED and job.attempts == 2 and job.output_keys == [key]
        assert not job.outputs_spooled
        assert fake_runtime.executions(settings.output_dir, "spooled") == (1 if spool_here else 2)
        assert services.output_store.get(key).startswith(b"\x89PNG")
        assert services.output_store.output_key_by_name("spooled_00001_.png") == key  # /view finds it
        assert services.output_store.pending() == 0
    finally:
        services.close()
