"""Scale-out cancel and the unsent-job sweeper, against the local AWS endpoint.

An API app (`create_app` with SQS + DynamoDB, so it runs no jobs itself) takes requests through
Starlette's TestClient; `Worker`s run in threads with the fast fake executor.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.jobs import JobManager, JobRuntime
from comfyd.engine.sweeper import requeue_unsent
from comfyd.runtime import Services, build_services
from comfyd.server import create_app
from comfyd.settings import Settings
from comfyd.worker import Worker


@pytest.fixture
def services(settings: Settings, provisioned, fake_runtime, recording) -> Iterator[Services]:
    built = build_services(settings)
    yield dataclasses.replace(recording(built), executor_factory=lambda: fake_runtime.build(settings))
    built.close()


@pytest.fixture
def http(settings: Settings, services: Services) -> Iterator[TestClient]:
    app = create_app(settings, services)  # SQS queue: an API server only, workers run the jobs
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client


class Workers:
    """Worker threads on the shared queue; stopped at the end of the test."""

    def __init__(self, settings: Settings, services: Services, fake_runtime) -> None:
        self.settings, self.services, self.fake_runtime = settings, services, fake_runtime
        self.stop = threading.Event()
        self.running: list[tuple[Worker, threading.Thread]] = []

    def start(self, count: int = 1, **kw: Any) -> list[Worker]:
        kw = {"visibility_s": 5, "poll_s": 1, **kw}
        started = []
        for _ in range(count):
            worker = Worker(self.settings, self.services, self.fake_runtime.build(self.settings), **kw)
            thread = threading.Thread(target=worker.run, args=(self.stop,), daemon=True)
            thread.start()
            self.running.append((worker, thread))
            started.append(worker)
        return started

    def join(self) -> None:
        self.stop.set()
        for _, thread in self.running:
            thread.join(timeout=30)


@pytest.fixture
def workers(settings: Settings, services: Services, fake_runtime) -> Iterator[Workers]:
    pool = Workers(settings, services, fake_runtime)
    yield pool
    pool.join()


def _wait(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def _status(services: Services, job_id: str) -> JobStatus | None:
    job = services.job_store.get(job_id)
    return job.status if job is not None else None


def _prompt(http: TestClient, workflow: dict) -> str:
    reply = http.post("/prompt", json={"prompt": workflow, "client_id": "tests"})
    assert reply.status_code == 200, reply.text
    return reply.json()["prompt_id"]


def _s3_keys(services: Services, settings: Settings, job_id: str) -> list[str]:
    s3 = services.output_store.aws.client("s3")
    found = s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix=f"{settings.s3_prefix}/{job_id}/")
    return [o["Key"] for o in found.get("Contents", [])]


def _queue_is_empty(services: Services) -> bool:
    return services.queue.depth() == 0 and services.queue.get(timeout=0) is None


# ---- cancel ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("route", "reason"), [
    ("cancel", "canceled"),  # POST /predictions/{id}/cancel
    ("interrupt", "interrupted"),  # POST /interrupt {prompt_id}
    ("interrupt-all", "interrupted"),  # POST /interrupt: every running job, wherever it runs
])
def test_cancel_reaches_the_worker_running_the_job(route: str, reason: str, http: TestClient, services: Services,
                                                   workers: Workers, settings: Settings, fake_runtime) -> None:
    [worker] = workers.start()
    job_id = _prompt(http, fake_runtime.workflow(seconds=30))
    _wait(lambda: _status(services, job_id) is JobStatus.RUNNING, 15, "the worker to start the job")
    asked = time.monotonic()
    if route == "cancel":
        reply = http.post(f"/predictions/{job_id}/cancel")
    else:
        reply = http.post("/interrupt", json={"prompt_id": job_id} if route == "interrupt" else None)
    assert reply.status_code == 200, reply.text
    _wait(lambda: _status(services, job_id) is JobStatus.CANCELED, 10, "the job to be canceled")
    assert time.monotonic() - asked < 5  # stopped at the next poll, not after its 30 s
    _wait(lambda: worker.stats.canceled == 1, 5, "the worker to count the cancel")

    # The same end as a local cancel: state, history, one completion event.
    job = services.job_store.get(job_id)
    assert job.error["type"] == reason and job.cancel_requested == reason
    assert job.messages[-1][0] == "execution_interrupted" and job.messages[-1][1]["reason"] == "canceled"
    entry = http.get(f"/history/{job_id}").json()[job_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["reason"] == "canceled"
    assert services.notifier.completed(job_id) == ["canceled"]
    # Nothing uploaded, message deleted (not redelivered), run once.
    assert _s3_keys(services, settings, job_id) == []
    assert job.output_keys == []
    assert _queue_is_empty(services)
    assert fake_runtime.executions(settings.output_dir, job_id) == 1
    assert worker.stats.failed == 0


def _stepping_runtime(settings: Settings) -> JobRuntime:
    """The real Executor on three small nodes: Save "1" -> Steps "2" (progress per step) -> Save "3"."""
    from comfyd.engine.cache import NodeCache
    from comfyd.engine.context import NodeContext, NodeEnvironment
    from comfyd.engine.executor import Executor
    from comfyd.engine.schema import Int, Link, Node, NodeOutput, NodeRegistry, NodeSchema, OutputSpec

    registry = NodeRegistry()

    @registry.register
    class StepSave(Node):
        schema = NodeSchema(class_type="StepSave", inputs=(Int("value", 0, min=0, max=10**6),),
                            outputs=(OutputSpec("INT", "value"),), output_node=True)

        def run(self, ctx: NodeContext, value: int) -> NodeOutput:
            name = f"{ctx.job_id}_{ctx.node_id}.png"
            Path(ctx.env.output_dir, name).write_bytes(b"\x89PNG\r\n\x1a\n")
            return NodeOutput(values=(value,), ui={"images": [{"filename": name, "subfolder": "", "type": "output"}]})

    @registry.register
    class Steps(Node):
        schema = NodeSchema(class_type="Steps", inputs=(Link("value", "INT"), Int("steps", 100, min=1, max=10**4)),
                            outputs=(OutputSpec("INT", "value"),))

        def run(self, ctx: NodeContext, value: int, steps: int) -> tuple[int]:
            for i in range(steps):
                time.sleep(0.05)
                ctx.progress(i + 1, steps)  # where an interrupt takes effect, as in the samplers
            return (value + steps,)

    @registry.register
    class LinkedSave(StepSave):
        schema = NodeSchema(class_type="LinkedSave", inputs=(Link("value", "INT"),), outputs=(), output_node=True)

    env = NodeEnvironment(settings, models=None)
    return JobRuntime(registry=registry, env=env, executor=Executor(registry, env, cache=NodeCache(max_bytes=0)))


def test_cancel_stops_the_real_executor_between_steps_and_uploads_nothing(
        http: TestClient, services: Services, settings: Settings) -> None:
    Path(settings.output_dir).mkdir(parents=True, exist_ok=True)
    workflow = {"1": {"class_type": "StepSave", "inputs": {"value": 1}},
                "2": {"class_type": "Steps", "inputs": {"value": ["1", 0], "steps": 400}},  # 20 s
                "3": {"class_type": "LinkedSave", "inputs": {"value": ["2", 0]}}}
    assert services.job_store.create(JobRecord(id="steps", workflow=workflow, node_id="2"))
    services.queue.put("steps", 1)
    worker = Worker(settings, services, _stepping_runtime(settings), visibility_s=5, poll_s=1)
    thread = threading.Thread(target=worker.run, args=(threading.Event(), 1))
    thread.start()
    _wait(lambda: (services.job_store.get("steps").progress or {}).get("value"), 15, "sampling steps")
    assert http.post("/predictions/steps/cancel").status_code == 200
    thread.join(timeout=15)
    job = services.job_store.get("steps")
    assert job.status is JobStatus.CANCELED and worker.stats.canceled == 1
    assert job.progress["node"] == "2" and job.progress["value"] < 400  # stopped mid-node
    assert job.messages[-1][0] == "execution_interrupted"
    assert Path(settings.output_dir, "steps_1.png").exists()  # node 1 saved before the cancel...
    assert _s3_keys(services, settings, "steps") == [] and job.output_keys == []  # ...not uploaded
    assert not Path(settings.output_dir, "steps_3.png").exists()
    assert _queue_is_empty(services)


def test_job_canceled_while_queued_is_dropped_by_the_worker(http: TestClient, services: Services, workers: Workers,
                                                            settings: Settings, fake_runtime) -> None:
    job_id = _prompt(http, fake_runtime.workflow(seconds=5))
    assert http.post("/queue", json={"delete": [job_id]}).status_code == 200
    job = services.job_store.get(job_id)
    assert job.status is JobStatus.CANCELED and job.error["type"] == "canceled"
    assert services.queue.depth() == 1  # SQS cannot take one message out...
    [worker] = workers.start()
    _wait(lambda: worker.stats.skipped == 1, 10, "the worker to drop the message")  # ...the worker drops it
    assert fake_runtime.executions(settings.output_dir, job_id) == 0
    assert _queue_is_empty(services)
    assert services.notifier.completed(job_id) == ["canceled"]


def test_cancel_request_on_a_queued_job_is_honoured_at_claim(services: Services, workers: Workers,
                                                             settings: Settings, fake_runtime) -> None:
    # A cancel that came while the job was between attempts (running -> queued for a retry).
    assert services.job_store.create(JobRecord(id="between", workflow=fake_runtime.workflow()))
    services.queue.put("between", 1)
    assert services.job_store.request_cancel("between", "canceled")
    [worker] = workers.start()
    _wait(lambda: worker.stats.canceled == 1, 10, "the worker to cancel the job")
    job = services.job_store.get("between")
    assert job.status is JobStatus.CANCELED and job.started_at is None
    assert fake_runtime.executions(settings.output_dir, "between") == 0
    assert _queue_is_empty(services)
    assert services.notifier.completed("between") == ["canceled"]


def test_cancel_after_the_end_changes_nothing(http: TestClient, services: Services, workers: Workers,
                                              fake_runtime) -> None:
    workers.start()
    job_id = _prompt(http, fake_runtime.workflow())
    _wait(lambda: _status(services, job_id) is JobStatus.SUCCEEDED, 15, "the job to finish")
    reply = http.post(f"/predictions/{job_id}/cancel")
    assert reply.status_code == 200 and reply.json()["status"] == "succeeded"
    job = services.job_store.get(job_id)
    assert job.status is JobStatus.SUCCEEDED and job.cancel_requested is None and job.output_keys


# ---- the sweeper -----------------------------------------------------------------------------


def _orphan(services: Services, job_id: str, fake_runtime, age_s: float = 300.0, priority: int = 1) -> None:
    """A job stored by an API process that died before sending its message."""
    record = JobRecord(id=job_id, workflow=fake_runtime.workflow(), priority=priority, created_at=time.time() - age_s)
    assert services.job_store.create(record)


def _drain(services: Services) -> list[str]:
    """Every message now in the queue (deleted): their job ids."""
    ids = []
    while (item := services.queue.get(timeout=0)) is not None:
        ids.append(item.job_id)
        services.queue.ack(item)
    return ids


def test_submitted_jobs_are_marked_sent(http: TestClient, services: Services, fake_runtime) -> None:
    job_id = _prompt(http, fake_runtime.workflow())
    assert services.job_store.get(job_id).enqueued_at is not None
    assert services.job_store.list_unsent(time.time() + 1) == []


def test_racing_sweepers_enqueue_each_orphan_exactly_once(settings: Settings, services: Services, provisioned,
                                                          fake_runtime) -> None:
    orphans = [f"orphan-{i}" for i in range(5)]
    for i, job_id in enumerate(orphans):
        _orphan(services, job_id, fake_runtime, priority=1 + 2 * i)
    _orphan(services, "young", fake_runtime, age_s=5)  # its API may still be sending it
    _orphan(services, "sent", fake_runtime)
    services.job_store.update("sent", enqueued_at=time.time())
    # Four sweepers (separate clients, as separate processes would have) at the same moment.
    others = [build_services(settings) for _ in range(3)]
    try:
        stores = [services, *others]
        barrier = threading.Barrier(len(stores))
        results: list[list[str]] = [[] for _ in stores]

        def sweep(index: int) -> None:
            barrier.wait()
            results[index] = requeue_unsent(stores[index].job_store, stores[index].queue, settings.requeue_after_s)

        threads = [threading.Thread(target=sweep, args=(i,)) for i in range(len(stores))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for other in others:
            other.close()
    sent = [job_id for result in results for job_id in result]
    assert sorted(sent) == orphans  # each once, by exactly one sweeper
    assert sorted(_drain(services)) == orphans  # and exactly one message each
    assert all(services.job_store.get(j).enqueued_at is not None for j in orphans)
    assert requeue_unsent(services.job_store, services.queue, settings.requeue_after_s) == []  # done for good


def _messages_left(services: Services) -> int:
    """Messages of the base band still in SQS, visible or held by a worker."""
    reply = services.queue.aws.client("sqs").get_queue_attributes(
        QueueUrl=services.queue.url(2),
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])
    return sum(int(v) for v in reply["Attributes"].values())


@pytest.mark.parametrize("duplicate", ["racing", "while-running"])
def test_a_double_enqueue_runs_and_completes_once(duplicate: str, services: Services, workers: Workers,
                                                  settings: Settings, fake_runtime) -> None:
    # The API sent the job but could not mark it sent: the sweeper sends it a second time.
    _orphan(services, "twice", fake_runtime)
    services.job_store.update("twice", workflow=fake_runtime.workflow(seconds=5))  # 2.5 leases
    services.queue.put("twice", 1)
    assert requeue_unsent(services.job_store, services.queue, settings.requeue_after_s) == ["twice"]
    assert services.queue.depth() == 2
    if duplicate == "racing":  # both workers take a message at once: one claim wins
        two = workers.start(2, visibility_s=2)
    else:  # the duplicate reaches a second worker while the first runs the job
        two = workers.start(1, visibility_s=2)
        _wait(lambda: _status(services, "twice") is JobStatus.RUNNING, 10, "the first worker to start")
        two += workers.start(1, visibility_s=2)
    _wait(lambda: _status(services, "twice") is JobStatus.SUCCEEDED, 20, "the job to finish")
    _wait(lambda: _messages_left(services) == 0, 20, "both messages to be deleted")
    _wait(lambda: sum(w.stats.succeeded for w in two) == 1, 5, "the worker that finished it to count it")
    # One run, one terminal write, one completion event, one stored image: the spare message,
    # delivered again while the job ran (delivery 2 and on), was left to the live holder.
    job = services.job_store.get("twice")
    assert len(job.output_keys) == 1 and job.attempts == 1
    assert services.notifier.completed("twice") == ["succeeded"]
    assert len(_s3_keys(services, settings, "twice")) == 1
    assert fake_runtime.executions(settings.output_dir, "twice") == 1
    assert sum(w.stats.taken_over for w in two) == 0 and sum(w.stats.duplicates for w in two) >= 1
    time.sleep(0.5)
    assert sum(w.stats.succeeded for w in two) == 1 and services.notifier.completed("twice") == ["succeeded"]


def test_worker_sweeps_and_runs_an_orphan(services: Services, settings: Settings, fake_runtime) -> None:
    _orphan(services, "lost", fake_runtime)
    worker = Worker(settings, services, fake_runtime.build(settings), visibility_s=5, poll_s=1)
    stats = worker.run(threading.Event(), max_jobs=1)
    assert stats.requeued == 1 and stats.succeeded == 1
    assert services.job_store.get("lost").status is JobStatus.SUCCEEDED


def test_api_server_sweeps_while_no_worker_runs(settings: Settings, services: Services, fake_runtime) -> None:
    quick = settings.model_copy(update={"requeue_after_s": 2.0})  # sweeps every second
    _orphan(services, "lost", fake_runtime, age_s=10)
    manager = JobManager(quick, services, services.executor_factory, services.queue, workers=False)
    manager.start()
    try:
        _wait(lambda: services.job_store.get("lost").enqueued_at is not None, 10, "the API server's sweep")
    finally:
        manager.stop()
    assert _drain(services) == ["lost"]
