"""SNS events over real HTTP, delivered to SQS subscribers with and without filter policies."""

from __future__ import annotations

import json

import pytest

from comfyd.backends.aws import build_notifier
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.aws.sns_notifier import MAX_MESSAGE_BYTES, build_attributes, build_message
from comfyd.backends.faultproxy import Fault, FaultProxy
from comfyd.settings import Settings


def _subscribe(aws: AwsSession, topic_arn: str, name: str, filter_policy: dict | None = None) -> str:
    sqs = aws.client("sqs")
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {"RawMessageDelivery": "true"}
    if filter_policy:
        attributes["FilterPolicy"] = json.dumps(filter_policy)
    aws.client("sns").subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=arn, Attributes=attributes)
    return url


def _drain(aws: AwsSession, url: str) -> list[dict]:
    sqs = aws.client("sqs")
    found = []
    while True:
        reply = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
                                    MessageAttributeNames=["All"])
        messages = reply.get("Messages", [])
        if not messages:
            return found
        for m in messages:
            found.append({"body": json.loads(m["Body"]),
                          "attributes": {k: v["StringValue"] for k, v in m.get("MessageAttributes", {}).items()}})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


def _payload(job_id: str, status: str) -> dict:
    return {"id": job_id, "status": status, "output": [f"s3://b/{job_id}.png"], "metrics": {"predict_time": 1.5},
            "comfyd": {"status": status, "node_timings": {"3": 1.2}}}


def test_completed_and_failed_events_with_filterable_attributes(settings: Settings, provisioned, aws: AwsSession) -> None:
    notifier = build_notifier(settings, aws)
    all_url = _subscribe(aws, provisioned["topic"], "all-events")
    failed_url = _subscribe(aws, provisioned["topic"], "failures", {"status": ["failed", "timed_out"]})

    notifier.publish("job.completed", _payload("j1", "succeeded"), {"job_id": "j1", "status": "succeeded", "source": "prompt"})
    notifier.publish("job.completed", _payload("j2", "failed"), {"job_id": "j2", "status": "failed", "source": "prompt",
                                                                 "webhook": "https://secret.example/hook"})
    notifier.publish("job.started", _payload("j3", "running"), {"job_id": "j3", "status": "running"})  # not for SNS

    everything = _drain(aws, all_url)
    assert [m["body"]["id"] for m in everything] == ["j1", "j2"]
    first = everything[0]
    assert first["body"]["event"] == "job.completed"
    assert first["body"]["output"] == ["s3://b/j1.png"]
    assert first["body"]["comfyd"]["node_timings"] == {"3": 1.2}
    assert first["attributes"] == {"event": "job.completed", "status": "succeeded", "job_id": "j1", "source": "prompt"}
    assert "webhook" not in everything[1]["attributes"]  # a client's webhook URL stays private
    failures = _drain(aws, failed_url)
    assert [m["body"]["id"] for m in failures] == ["j2"]


def test_topic_by_arn(settings: Settings, provisioned, aws: AwsSession) -> None:
    notifier = build_notifier(settings.model_copy(update={"sns_topic": provisioned["topic"]}), aws)
    assert notifier.arn == provisioned["topic"]
    url = _subscribe(aws, provisioned["topic"], "by-arn")
    notifier.publish("job.completed", _payload("j1", "succeeded"), {"status": "succeeded"})
    assert len(_drain(aws, url)) == 1


def test_oversized_payload_is_trimmed_not_lost() -> None:
    payload = {**_payload("j1", "succeeded"), "input": {"workflow_json": {"t": "x" * MAX_MESSAGE_BYTES}}}
    body = json.loads(build_message("job.completed", payload))
    assert body["truncated"] is True and "input" not in body
    assert body["id"] == "j1" and body["output"] == ["s3://b/j1.png"]  # the rest kept while it fits


def test_attribute_limits() -> None:
    assert build_attributes("e", {"status": "ok"}, {"empty": ""}) == {
        "event": {"DataType": "String", "StringValue": "e"}, "status": {"DataType": "String", "StringValue": "ok"}}
    with pytest.raises(ValueError, match="10 message attributes"):
        build_attributes("e", {}, {f"a{i}": "v" for i in range(10)})


def test_throttled_publish_is_retried(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    aws = AwsSession.from_settings(settings)
    url = _subscribe(aws, provisioned["topic"], "retried")
    rule = fault_proxy.add(Fault("throttle", service="sns", operation="Publish", times=3))
    build_notifier(settings, aws).publish("job.completed", _payload("j1", "succeeded"), {"status": "succeeded"})
    assert rule.hits == 3
    assert len(_drain(aws, url)) == 1
