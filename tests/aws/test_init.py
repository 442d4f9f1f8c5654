"""`comfyd aws init`: creates what the settings name, and running it again changes nothing."""

from __future__ import annotations

import json

import pytest

from comfyd.backends.aws.init import aws_init
from comfyd.backends.aws.session import AwsSession
from comfyd.settings import Settings


def test_creates_everything_then_is_idempotent(settings: Settings, aws: AwsSession) -> None:
    first = aws_init(settings, aws)
    assert first["bucket"] == {"name": "comfyd-test", "state": "created"}
    assert first["table"] == {"name": "comfyd-jobs", "state": "created"}
    assert sorted(first["queues"]) == ["comfyd-jobs", "comfyd-jobs-dlq", "comfyd-jobs-high", "comfyd-jobs-medium"]
    assert first["topic"] == "arn:aws:sns:us-east-1:123456789012:comfyd-events"

    second = aws_init(settings, aws)
    assert second["bucket"]["state"] == "exists" and second["table"]["state"] == "exists"
    assert second["queues"] == first["queues"] and second["topic"] == first["topic"]
    assert len(aws.client("sqs").list_queues()["QueueUrls"]) == 4
    assert len(aws.client("sns").list_topics()["Topics"]) == 1


def test_queues_redrive_to_the_dlq(settings: Settings, aws: AwsSession) -> None:
    urls = aws_init(settings, aws)["queues"]
    sqs = aws.client("sqs")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=urls["comfyd-jobs-dlq"], AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for name in ("comfyd-jobs", "comfyd-jobs-high", "comfyd-jobs-medium"):
        attributes = sqs.get_queue_attributes(QueueUrl=urls[name], AttributeNames=["All"])["Attributes"]
        policy = json.loads(attributes["RedrivePolicy"])
        assert policy["deadLetterTargetArn"] == dlq_arn
        assert int(policy["maxReceiveCount"]) == 5
        assert attributes["ReceiveMessageWaitTimeSeconds"] == "20"


def test_existing_queue_with_other_attributes_is_brought_in_line(settings: Settings, aws: AwsSession) -> None:
    sqs = aws.client("sqs")
    sqs.create_queue(QueueName="comfyd-jobs", Attributes={"VisibilityTimeout": "5"})
    urls = aws_init(settings, aws)["queues"]
    attributes = sqs.get_queue_attributes(QueueUrl=urls["comfyd-jobs"], AttributeNames=["All"])["Attributes"]
    assert attributes["VisibilityTimeout"] == "60"
    assert "RedrivePolicy" in attributes


def test_bucket_is_private_and_encrypted(settings: Settings, aws: AwsSession) -> None:
    key_id = aws.client("kms").create_key()["KeyMetadata"]["KeyId"]
    aws_init(settings.model_copy(update={"s3_kms_key_id": key_id}), aws)
    s3 = aws.client("s3")
    block = s3.get_public_access_block(Bucket="comfyd-test")["PublicAccessBlockConfiguration"]
    assert all(block.values())
    rule = s3.get_bucket_encryption(Bucket="comfyd-test")["ServerSideEncryptionConfiguration"]["Rules"][0]
    assert rule["ApplyServerSideEncryptionByDefault"] == {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id}


def test_bucket_outside_us_east_1(settings: Settings) -> None:
    aws = AwsSession(region="eu-west-1")
    report = aws_init(settings.model_copy(update={"aws_region": "eu-west-1", "dynamodb_table": None,
                                                  "sqs_queue": None, "sns_topic": None}), aws)
    assert report == {"region": "eu-west-1", "bucket": {"name": "comfyd-test", "state": "created"}}
    assert aws.client("s3").get_bucket_location(Bucket="comfyd-test")["LocationConstraint"] == "eu-west-1"


def test_only_what_is_named(settings: Settings, aws: AwsSession) -> None:
    report = aws_init(settings.model_copy(update={"s3_bucket": None, "dynamodb_table": None, "sns_topic": None}), aws)
    assert set(report) == {"region", "queues"}
    assert aws.client("s3").list_buckets()["Buckets"] == []


def test_nothing_named_is_an_error(aws: AwsSession) -> None:
    with pytest.raises(ValueError, match="nothing to create"):
        aws_init(Settings(aws_region="us-east-1"), aws)
