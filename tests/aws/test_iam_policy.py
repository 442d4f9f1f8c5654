"""deploy/iam-policy*.json grant exactly the calls comfyd makes, on exactly its resources.

Every API call of a full run (init; then server + worker traffic: jobs, retries, dead letters,
large job state, multipart uploads and their abort, metrics, events) is recorded from botocore's
own events, turned into (IAM action, resource ARN) and checked against the rendered policies.
"""

from __future__ import annotations

import fnmatch
import threading
from typing import Any

import pytest

import comfyd.backends.aws.s3_store as s3_store
from comfyd.backends.aws import (
    build_job_store,
    build_metrics,
    build_notifier,
    build_output_store,
    build_queue,
)
from comfyd.backends.aws.iam import INIT_POLICY, policy_actions, render_policy
from comfyd.backends.aws.init import aws_init, ensure_queues
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.faultproxy import Fault, FaultProxy
from comfyd.engine.interfaces import JobRecord
from comfyd.runtime import Services, build_services
from comfyd.settings import Settings
from comfyd.worker import Worker

ACCOUNT = "123456789012"
REGION = "us-east-1"
# IAM names that differ from the operation name.
ACTION_OF = {
    ("s3", "HeadObject"): "s3:GetObject", ("s3", "HeadBucket"): "s3:ListBucket",
    ("s3", "CreateMultipartUpload"): "s3:PutObject", ("s3", "UploadPart"): "s3:PutObject",
    ("s3", "CompleteMultipartUpload"): "s3:PutObject", ("s3", "PutBucketEncryption"): "s3:PutEncryptionConfiguration",
    ("s3", "PutPublicAccessBlock"): "s3:PutBucketPublicAccessBlock",
}
NEEDS_NO_PERMISSION = {("sts", "GetCallerIdentity")}
IAM_PREFIX = {"s3": "s3", "dynamodb": "dynamodb", "sqs": "sqs", "sns": "sns", "cloudwatch": "cloudwatch", "sts": "sts"}


class CallRecorder:
    def __init__(self, aws: AwsSession) -> None:
        self.calls: list[tuple[str, str]] = []  # (action, resource)
        self._lock = threading.Lock()
        aws.boto.events.register("before-parameter-build", self._record)

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        service = model.service_model.service_name
        key = (service, model.name)
        if key in NEEDS_NO_PERMISSION:
            return
        action = ACTION_OF.get(key, f"{IAM_PREFIX[service]}:{model.name}")
        with self._lock:
            self.calls.append((action, _resource(service, params)))


def _resource(service: str, params: dict[str, Any]) -> str:
    if service == "s3":
        key = params.get("Key")
        return f"arn:aws:s3:::{params['Bucket']}" + (f"/{key}" if key else "")
    if service == "dynamodb":
        index = f"/index/{params['IndexName']}" if params.get("IndexName") else ""
        return f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{params['TableName']}{index}"
    if service == "sqs":
        name = params.get("QueueName") or params["QueueUrl"].rsplit("/", 1)[-1]
        return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{name}"
    if service == "sns":
        return params.get("TopicArn") or f"arn:aws:sns:{REGION}:{ACCOUNT}:{params['Name']}"
    return "*"  # cloudwatch: no resource-level permissions


def _allowed(policy: dict[str, Any], action: str, resource: str) -> bool:
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        resources = [statement["Resource"]] if isinstance(statement["Resource"], str) else statement["Resource"]
        if action in actions and any(fnmatch.fnmatchcase(resource, pattern) for pattern in resources):
            return True
    return False


def _assert_exact(policy: dict[str, Any], calls: list[tuple[str, str]], not_calls: set[str] = frozenset()) -> None:
    refused = sorted({(a, r) for a, r in calls if not _allowed(policy, a, r)})
    assert refused == [], "calls the policy does not allow"
    unused = policy_actions(policy) - {a for a, _ in calls} - not_calls
    assert unused == set(), "the policy grants actions comfyd never calls"


@pytest.fixture
def kms_settings(settings: Settings, aws: AwsSession) -> Settings:
    key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    return settings.model_copy(update={"s3_kms_key_id": key_id})


def test_init_policy_is_exact(settings: Settings) -> None:
    # A queue made by hand with other attributes: init brings it in line (the update path).
    AwsSession.from_settings(settings).client("sqs").create_queue(
        QueueName=settings.sqs_queue + "-high", Attributes={"VisibilityTimeout": "5"})
    aws = AwsSession.from_settings(settings)
    recorder = CallRecorder(aws)
    aws_init(settings, aws)
    aws_init(settings, aws)  # the second run takes the "exists" paths
    _assert_exact(render_policy(settings, ACCOUNT, name=INIT_POLICY), recorder.calls)


def test_runtime_policy_is_exact(fault_proxy: FaultProxy, kms_settings: Settings, fake_runtime,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    settings = kms_settings
    aws_init(settings, AwsSession.from_settings(settings))
    aws = AwsSession.from_settings(settings)
    recorder = CallRecorder(aws)
    defaults = build_services(settings.model_copy(update={"storage": "local", "jobstore": "sqlite", "queue": "local",
                                                          "metrics": "none", "sns_topic": None}))
    services = Services(
        job_store=build_job_store(settings, aws), queue=build_queue(settings, aws),
        output_store=build_output_store(settings, aws), metrics=build_metrics(settings, aws),
        notifier=build_notifier(settings, aws), executor_factory=defaults.executor_factory,
        closers=defaults.closers,
    )
    services.closers += [services.output_store.close, services.metrics.close]
    try:
        big = {**fake_runtime.workflow(), "2": {"class_type": "Note", "inputs": {"text": "w" * 40_000}}}
        for job_id, workflow in [("ok", fake_runtime.workflow()), ("big", big),
                                 ("flaky", fake_runtime.workflow(fail="SlowDown", fail_times=1)),
                                 ("broken", fake_runtime.workflow(fail="boom"))]:
            services.job_store.create(JobRecord(id=job_id, workflow=workflow, priority=8))
            services.queue.put(job_id, 8)
        worker = Worker(settings, services, fake_runtime.build(settings), visibility_s=5, poll_s=1)
        stop = threading.Event()
        threading.Timer(30, stop.set).start()  # a bug must fail the test, not hang it
        assert worker.run(stop, max_jobs=5).succeeded == 3
        stop.set()
        # A job whose worker died: to the DLQ, then failed by a worker.
        ensure_queues(AwsSession.from_settings(settings), settings.sqs_queue, max_receives=1)
        services.job_store.create(JobRecord(id="cursed", workflow=fake_runtime.workflow()))
        services.queue.put("cursed", 1)
        services.queue.nack(services.queue.get(timeout=1))
        assert services.queue.get(timeout=0) is None  # this receive moves it to the DLQ
        assert worker.fail_dead_letters() == 1
        # Server traffic: history, progress, reads of outputs (incl. a missing one), deletes.
        services.job_store.list(limit=10)
        services.job_store.update("ok", progress={"value": 1})
        # Cancel requests (API side, worker's poll) and the sweeper's claim.
        services.job_store.request_cancel("ok", "canceled")
        services.job_store.cancel_requested("ok")
        services.job_store.claim_requeue("ok", 0.0, 60.0)
        worker.sweep()
        services.output_store.get("out/ok/ok_00001_.png")
        services.output_store.head("out/ok/ok_00001_.png")
        with pytest.raises(KeyError):
            services.output_store.get("out/ok/none.png")
        services.job_store.delete("big")
        services.queue.depth()
        # A multipart upload that fails (and is aborted), then succeeds from the spool.
        monkeypatch.setattr(s3_store, "MULTIPART_THRESHOLD", 5 * 1024 * 1024)
        services.output_store.spool._min_interval_s = services.output_store.spool._interval_s = 0.05
        fault_proxy.add(Fault("error", service="s3", method="PUT", status=500, times=6))
        services.output_store.put("ok", "big.bin", bytes(6 * 1024 * 1024), "application/octet-stream")
        services.metrics.flush()
    finally:
        services.close()
    # s3:ListBucket is no call: it makes a missing key answer 404 (KeyError) rather than 403.
    # kms: S3 calls KMS on comfyd's behalf for SSE-KMS objects (moto does so internally).
    _assert_exact(render_policy(settings, ACCOUNT), recorder.calls,
                  not_calls={"s3:ListBucket", "kms:GenerateDataKey", "kms:Decrypt"})
    actions = {a for a, _ in recorder.calls}
    assert {"s3:AbortMultipartUpload", "s3:DeleteObject", "sqs:ChangeMessageVisibility", "dynamodb:Query"} <= actions


def test_unconfigured_parts_are_left_out(settings: Settings) -> None:
    only_s3 = settings.model_copy(update={"dynamodb_table": None, "sqs_queue": None, "sns_topic": None,
                                          "metrics": "prometheus"})
    policy = render_policy(only_s3, ACCOUNT)
    assert policy_actions(policy) == {"s3:PutObject", "s3:GetObject", "s3:DeleteObject", "s3:AbortMultipartUpload",
                                      "s3:ListBucket"}
    assert "BUCKET" not in str(policy) and "comfyd-test" in str(policy)


def test_api_policy_is_exact_and_cannot_consume_or_delete(settings: Settings, fake_runtime) -> None:
    """An API process (serve in front of SQS, the Lambda API function) through its routes:
    submit (a large workflow offloaded to S3, a resubmission of the same id), read, cancel,
    interrupt, delete history, metrics. Its policy allows exactly those calls, and none that
    take work off the queue or delete objects."""
    from fastapi.testclient import TestClient

    from comfyd.backends.aws.iam import API_POLICY
    from comfyd.server import create_app

    aws_init(settings, AwsSession.from_settings(settings))
    aws = AwsSession.from_settings(settings)
    recorder = CallRecorder(aws)
    services = Services(
        job_store=build_job_store(settings, aws, api_only=True), queue=build_queue(settings, aws),
        output_store=build_output_store(settings, aws), metrics=build_metrics(settings, aws),
        notifier=build_notifier(settings, aws), executor_factory=lambda: fake_runtime.build(settings),
    )
    big = {**fake_runtime.workflow(), "2": {"class_type": "Note", "inputs": {"text": "w" * 40_000}}}
    try:
        with TestClient(create_app(settings, services, workers=False), base_url="http://127.0.0.1") as http:
            for body in ({"prompt": big, "prompt_id": "big"}, {"prompt": big, "prompt_id": "big"},
                         {"prompt": fake_runtime.workflow(), "prompt_id": "small"}):
                assert http.post("/prompt", json=body).status_code == 200
            assert "big" in http.get("/history/big").json() or http.get("/predictions/big").status_code == 200
            assert http.get("/queue").status_code == 200
            assert http.post("/interrupt", json={}).status_code == 200
            assert http.post("/queue", json={"delete": ["small"]}).status_code == 200  # cancel while queued
            assert http.post("/history", json={"delete": ["small"]}).status_code == 200
        services.metrics.flush()
    finally:
        services.output_store.close()
        services.metrics.close()
    policy = render_policy(settings, ACCOUNT, name=API_POLICY)
    _assert_exact(policy, recorder.calls, not_calls={"s3:ListBucket"})
    granted = policy_actions(policy)
    assert not {"sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "s3:DeleteObject"} & granted
    assert "s3:DeleteObject" in policy_actions(render_policy(settings, ACCOUNT))  # the workers' policy keeps it
