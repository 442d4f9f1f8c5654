"""`comfyd aws init`: create the AWS resources the settings name. Safe to run again.

- S3 bucket COMFYD_S3_BUCKET: public access blocked; default encryption SSE-KMS when
  COMFYD_S3_KMS_KEY_ID is set (SSE-S3 otherwise).
- DynamoDB table COMFYD_DYNAMODB_TABLE: key `id`, on-demand capacity, the `by_status` index, TTL
  on `expires_at`.
- SQS: the dead-letter queue NAME-dlq, then NAME-high, NAME-medium and NAME, each with a redrive
  policy to the DLQ after MAX_RECEIVES deliveries (see sqs_queue.py for the priority bands).
- SNS topic COMFYD_SNS_TOPIC.

Each resource is created only if the corresponding setting is given; an existing resource is
left as it is (attributes comfyd depends on, such as TTL and the redrive policy, are re-applied).
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from comfyd.backends.aws.dynamodb_store import STATUS_INDEX, TTL_ATTRIBUTE
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.aws.sqs_queue import DLQ_SUFFIX, MAX_RECEIVES, queue_names

if TYPE_CHECKING:
    from comfyd.settings import Settings

log = logging.getLogger(__name__)

QUEUE_VISIBILITY_S = 60
QUEUE_RETENTION_S = 4 * 24 * 3600
DLQ_RETENTION_S = 14 * 24 * 3600


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _bucket_is_ours(s3: Any, bucket: str) -> bool:
    try:
        s3.head_bucket(Bucket=bucket)
        return True
    except ClientError as exc:
        if _code(exc) in ("403", "AccessDenied", "Forbidden"):
            raise ValueError(f"S3 bucket {bucket!r} exists but this account may not use it; choose another COMFYD_S3_BUCKET") from exc
        if _code(exc) in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise


def ensure_bucket(aws: AwsSession, bucket: str, kms_key_id: str | None = None) -> str:
    s3 = aws.client("s3")
    state = "exists" if _bucket_is_ours(s3, bucket) else "created"
    if state == "created":
        params: dict[str, Any] = {"Bucket": bucket}
        if aws.region != "us-east-1":  # us-east-1 refuses an explicit location constraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": aws.region}
        try:
            s3.create_bucket(**params)
        except ClientError as exc:
            if _code(exc) == "BucketAlreadyExists":
                raise ValueError(f"S3 bucket name {bucket!r} is taken by another account; choose another COMFYD_S3_BUCKET") from exc
            if _code(exc) != "BucketAlreadyOwnedByYou":  # created meanwhile by another init: fine
                raise
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration={
        "BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True,
    })
    rule: dict[str, Any] = {"SSEAlgorithm": "AES256"}
    if kms_key_id:
        rule = {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": kms_key_id}
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": rule, "BucketKeyEnabled": bool(kms_key_id)}],
    })
    return state


def ensure_table(aws: AwsSession, table: str, *, wait_s: float = 120.0) -> str:
    ddb = aws.client("dynamodb")
    state = "created"
    try:
        ddb.create_table(
            TableName=table,
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=[
                {"AttributeName": "id", "AttributeType": "S"},
                {"AttributeName": "status", "AttributeType": "S"},
                {"AttributeName": "created_at", "AttributeType": "N"},
            ],
            KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
            GlobalSecondaryIndexes=[{
                "IndexName": STATUS_INDEX,
                "KeySchema": [{"AttributeName": "status", "KeyType": "HASH"},
                              {"AttributeName": "created_at", "KeyType": "RANGE"}],
                "Projection": {"ProjectionType": "ALL"},
            }],
        )
    except ClientError as exc:
        if _code(exc) != "ResourceInUseException":
            raise
        state = "exists"
    deadline = time.monotonic() + wait_s
    while ddb.describe_table(TableName=table)["Table"]["TableStatus"] != "ACTIVE":
        if time.monotonic() > deadline:
            raise TimeoutError(f"DynamoDB table {table} is not ACTIVE after {wait_s:.0f} s")
        time.sleep(1.0)
    ttl = ddb.describe_time_to_live(TableName=table)["TimeToLiveDescription"]
    if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or ttl.get("AttributeName") != TTL_ATTRIBUTE:
        ddb.update_time_to_live(TableName=table, TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE})
    return state


def ensure_queues(aws: AwsSession, base: str, *, max_receives: int = MAX_RECEIVES) -> dict[str, str]:
    """{queue name: url} for the DLQ and the band queues."""
    sqs = aws.client("sqs")
    urls: dict[str, str] = {}
    dlq_name = base + DLQ_SUFFIX
    dlq_url = _ensure_queue(sqs, dlq_name, {"MessageRetentionPeriod": str(DLQ_RETENTION_S)})
    urls[dlq_name] = dlq_url
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    attributes = {
        "VisibilityTimeout": str(QUEUE_VISIBILITY_S),
        "MessageRetentionPeriod": str(QUEUE_RETENTION_S),
        "ReceiveMessageWaitTimeSeconds": "20",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(max_receives)}),
    }
    for name in queue_names(base):
        urls[name] = _ensure_queue(sqs, name, attributes)
    return urls


def _ensure_queue(sqs: Any, name: str, attributes: dict[str, str]) -> str:
    try:
        return sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
    except ClientError as exc:
        if _code(exc) not in ("QueueAlreadyExists", "QueueNameExists"):
            raise
    # It exists with other attributes: bring those comfyd relies on to the wanted values.
    url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes=attributes)
    return url


def ensure_topic(aws: AwsSession, topic: str) -> str:
    """The topic's ARN (CreateTopic is idempotent for an existing name)."""
    name = topic.rsplit(":", 1)[-1] if topic.startswith("arn:") else topic
    return aws.client("sns").create_topic(Name=name)["TopicArn"]


def aws_init(settings: Settings, aws: AwsSession | None = None) -> dict[str, Any]:
    """Create what the settings name; returns {resource: {name, state}} for printing."""
    aws = aws or AwsSession.from_settings(settings)
    aws.verify_credentials()  # MissingCredentials: one line, not a traceback from the first call
    report: dict[str, Any] = {"region": aws.region}
    if settings.s3_bucket:
        report["bucket"] = {"name": settings.s3_bucket, "state": ensure_bucket(aws, settings.s3_bucket, settings.s3_kms_key_id)}
    if settings.dynamodb_table:
        report["table"] = {"name": settings.dynamodb_table, "state": ensure_table(aws, settings.dynamodb_table)}
    if settings.sqs_queue:
        # A retried job comes back through the queue: every allowed retry must fit before the DLQ.
        report["queues"] = ensure_queues(aws, settings.sqs_queue,
                                         max_receives=max(MAX_RECEIVES, settings.retry_attempts + 2))
    if settings.sns_topic:
        report["topic"] = ensure_topic(aws, settings.sns_topic)
    if len(report) == 1:
        raise ValueError(
            "nothing to create: set COMFYD_S3_BUCKET, COMFYD_DYNAMODB_TABLE, COMFYD_SQS_QUEUE and/or COMFYD_SNS_TOPIC"
        )
    return report
