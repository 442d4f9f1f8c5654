"""DynamoDB job store over real HTTP: conditional transitions, TTL, S3 offload of large fields."""

from __future__ import annotations

import threading
import time

import pytest

from comfyd.backends.aws import build_job_store
from comfyd.backends.aws.dynamodb_store import DynamoJobStore, ItemTooLargeError
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.faultproxy import Fault, FaultProxy
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.settings import Settings


def _store(settings: Settings, **overrides) -> DynamoJobStore:
    return build_job_store(settings.model_copy(update=overrides), AwsSession.from_settings(settings))


def _job(job_id: str = "job-1", **fields) -> JobRecord:
    workflow = {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "cfg": 7.5}}}
    return JobRecord(id=job_id, workflow=fields.pop("workflow", workflow), **fields)


def _raw_item(aws: AwsSession, settings: Settings, job_id: str) -> dict:
    return aws.client("dynamodb").get_item(TableName=settings.dynamodb_table, Key={"id": {"S": job_id}})["Item"]


def test_round_trip_keeps_every_field(settings: Settings, provisioned) -> None:
    store = _store(settings)
    job = _job(priority=7, number=3, client_id="c1", extra_data={"extra_pnginfo": {"workflow": {"n": [1.5, None]}}},
               created_at=round(time.time(), 2) + 0.25, node_timings={"3": 0.125}, messages=[["execution_start", {"a": 1}]])
    assert store.create(job)
    got = store.get("job-1")
    assert got is not None
    expected = JobRecord(**{**job.__dict__, "expires_at": job.created_at + settings.job_ttl_s})
    assert got == expected
    assert isinstance(got.status, JobStatus)


def test_create_twice_is_refused(settings: Settings, provisioned) -> None:
    store = _store(settings)
    assert store.create(_job())
    assert not store.create(_job(priority=9))
    assert store.get("job-1").priority == 1


def test_transition_is_conditional(settings: Settings, provisioned) -> None:
    store = _store(settings)
    store.create(_job())
    assert not store.transition("job-1", {JobStatus.RUNNING}, JobStatus.SUCCEEDED)
    assert store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="w1", attempts=1, started_at=5.0)
    assert not store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="w2")
    got = store.get("job-1")
    assert (got.status, got.worker_id, got.attempts, got.started_at) == (JobStatus.RUNNING, "w1", 1, 5.0)
    assert not store.transition("nope", {JobStatus.QUEUED}, JobStatus.RUNNING)
    assert store.get("nope") is None  # a failed transition creates nothing


def test_only_one_of_many_workers_finishes(settings: Settings, provisioned) -> None:
    store = _store(settings)
    store.create(_job())
    store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING)
    wins: list[str] = []
    barrier = threading.Barrier(6)

    def finish(worker: str) -> None:
        barrier.wait()
        if store.transition("job-1", {JobStatus.RUNNING}, JobStatus.SUCCEEDED, worker_id=worker,
                            outputs={"9": {"images": [{"filename": worker}]}}):
            wins.append(worker)

    threads = [threading.Thread(target=finish, args=(f"w{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    got = store.get("job-1")
    assert got.worker_id == wins[0]
    assert got.outputs == {"9": {"images": [{"filename": wins[0]}]}}


def test_terminal_transition_renews_expiry(settings: Settings, provisioned) -> None:
    store = _store(settings)
    store.create(_job(created_at=time.time() - 100))
    before = store.get("job-1").expires_at
    store.transition("job-1", {JobStatus.QUEUED}, JobStatus.FAILED, finished_at=time.time())
    after = store.get("job-1").expires_at
    assert after > before + 90


def test_update_sets_fields_and_never_creates(settings: Settings, provisioned) -> None:
    store = _store(settings)
    store.create(_job())
    store.update("job-1", progress={"value": 3, "max": 20, "node": "3"})
    assert store.get("job-1").progress == {"value": 3, "max": 20, "node": "3"}
    store.update("ghost", progress={"value": 1})
    assert store.get("ghost") is None
    with pytest.raises(ValueError, match="transition"):
        store.update("job-1", status=JobStatus.FAILED)
    with pytest.raises(ValueError, match="unknown job field"):
        store.update("job-1", colour="blue")


def test_expired_items_are_gone_on_read(settings: Settings, provisioned, aws: AwsSession) -> None:
    store = _store(settings)
    store.create(_job("old", expires_at=time.time() - 1))
    store.create(_job("new"))
    assert _raw_item(aws, settings, "old")  # moto (like DynamoDB for a while) still has it
    assert store.get("old") is None
    assert [j.id for j in store.list()] == ["new"]
    assert not store.transition("old", {JobStatus.QUEUED}, JobStatus.RUNNING)
    store.update("old", progress={"value": 1})
    assert _raw_item(aws, settings, "old")["progress"] == {"B": b"{}"}
    assert store.create(_job("old", priority=4))  # an expired id is free again
    assert store.get("old").priority == 4


def test_large_fields_go_to_s3_and_items_stay_small(settings: Settings, provisioned, aws: AwsSession) -> None:
    store = _store(settings)
    big_prompt = "a cat " * 20_000  # ~120 KB of workflow
    workflow = {"6": {"class_type": "CLIPTextEncode", "inputs": {"text": big_prompt}}}
    assert store.create(_job(workflow=workflow))
    raw = _raw_item(aws, settings, "job-1")
    assert "workflow" not in raw
    key = raw["_s3"]["M"]["workflow"]["S"]
    assert key.startswith("out/state/job-1/workflow-")
    assert len(repr(raw)) < 10_000
    assert store.get("job-1").workflow == workflow

    # A large result replaces the earlier one; the replaced S3 copy is deleted.
    outputs = {"9": {"images": [{"filename": f"img_{i:05}.png", "subfolder": "x" * 50} for i in range(600)]}}
    store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING, outputs=outputs)
    first = _raw_item(aws, settings, "job-1")["_s3"]["M"]["outputs"]["S"]
    outputs2 = {"9": {"images": [{"filename": f"b_{i:05}.png", "subfolder": "y" * 50} for i in range(600)]}}
    store.update("job-1", outputs=outputs2)
    assert store.get("job-1").outputs == outputs2
    s3 = aws.client("s3")
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix="out/state/job-1/")["Contents"]}
    assert first not in listed
    # A small value brings the field back inline and drops the reference.
    store.update("job-1", outputs={})
    raw = _raw_item(aws, settings, "job-1")
    assert "outputs" not in raw["_s3"]["M"] and raw["outputs"] == {"B": b"{}"}
    assert store.get("job-1").outputs == {}

    store.delete("job-1")
    assert store.get("job-1") is None
    assert "Contents" not in s3.list_objects_v2(Bucket=settings.s3_bucket, Prefix="out/state/job-1/")


def test_a_losing_write_leaves_no_s3_garbage(settings: Settings, provisioned, aws: AwsSession) -> None:
    store = _store(settings)
    store.create(_job())
    big = {"9": {"text": "z" * 50_000}}
    assert not store.transition("job-1", {JobStatus.RUNNING}, JobStatus.SUCCEEDED, outputs=big)
    assert "Contents" not in aws.client("s3").list_objects_v2(Bucket=settings.s3_bucket, Prefix="out/state/")


def test_large_field_without_bucket_is_a_clear_error(settings: Settings, provisioned) -> None:
    store = _store(settings, s3_bucket=None)
    with pytest.raises(ItemTooLargeError, match="COMFYD_S3_BUCKET"):
        store.create(_job(workflow={"1": {"class_type": "X", "inputs": {"t": "y" * 40_000}}}))


def test_list_newest_first_with_status_filter(settings: Settings, provisioned) -> None:
    store = _store(settings)
    now = time.time()
    for i in range(7):
        store.create(_job(f"j{i}", created_at=now + i))
    store.transition("j2", {JobStatus.QUEUED}, JobStatus.RUNNING)
    store.transition("j5", {JobStatus.QUEUED}, JobStatus.SUCCEEDED)
    store.transition("j6", {JobStatus.QUEUED}, JobStatus.FAILED)
    assert [j.id for j in store.list()] == ["j6", "j5", "j4", "j3", "j2", "j1", "j0"]
    assert [j.id for j in store.list(limit=3)] == ["j6", "j5", "j4"]
    assert [j.id for j in store.list({JobStatus.QUEUED})] == ["j4", "j3", "j1", "j0"]
    assert [j.id for j in store.list({JobStatus.SUCCEEDED, JobStatus.FAILED})] == ["j6", "j5"]
    assert store.list({JobStatus.CANCELED}) == []


def test_throttling_is_retried(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    store = _store(settings)
    rule = fault_proxy.add(Fault("throttle", service="dynamodb", operation="PutItem", times=4))
    assert store.create(_job())  # 3 botocore attempts, then the project's backoff
    assert rule.hits == 4
    fault_proxy.add(Fault("reset", service="dynamodb", operation="UpdateItem", times=1))
    assert store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING)


def test_table_has_ttl_and_status_index(settings: Settings, provisioned, aws: AwsSession) -> None:
    ddb = aws.client("dynamodb")
    ttl = ddb.describe_time_to_live(TableName=settings.dynamodb_table)["TimeToLiveDescription"]
    assert ttl == {"TimeToLiveStatus": "ENABLED", "AttributeName": "expires_at"}
    table = ddb.describe_table(TableName=settings.dynamodb_table)["Table"]
    assert [i["IndexName"] for i in table["GlobalSecondaryIndexes"]] == ["by_status"]


def _ambiguous(operation: str) -> Fault:
    """DynamoDB applies the write, then answers 500: botocore retries, the retry's condition fails."""
    return Fault("error", service="dynamodb", operation=operation, status=500, code="InternalServerError",
                 applied=True, times=1)


def test_an_applied_transition_answered_500_is_ours_not_a_conflict(fault_proxy: FaultProxy, settings: Settings,
                                                                  provisioned) -> None:
    store = _store(settings)
    assert store.create(_job())
    fault = fault_proxy.add(_ambiguous("UpdateItem"))
    assert store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="w1")
    assert fault.hits == 1  # the first try was applied and answered 500; the retry found it done
    assert store.get("job-1").status is JobStatus.RUNNING
    # A real conflict is still one: another worker's claim of the running job fails.
    assert not store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="w2")
    fault_proxy.add(_ambiguous("UpdateItem"))
    assert not store.transition("job-1", {JobStatus.QUEUED}, JobStatus.RUNNING, worker_id="w2")
    assert store.get("job-1").worker_id == "w1"


def test_an_applied_create_answered_500_is_created(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    store = _store(settings)
    fault = fault_proxy.add(_ambiguous("PutItem"))
    assert store.create(_job("made"))
    assert fault.hits == 1 and store.get("made") is not None
    assert not store.create(_job("made"))  # a second create of the same id is still refused
