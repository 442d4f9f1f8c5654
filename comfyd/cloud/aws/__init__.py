"""The AWS backends: S3 outputs, DynamoDB jobs, SQS queue, CloudWatch metrics, SNS events.

`comfyd.cloud.build_services` imports this package only when a setting chooses AWS, so boto3
stays out of processes that do not use it. Each factory takes the one Settings object and an
optional shared AwsSession (one per process is enough: clients are thread-safe):

    aws = make_session(settings)         # region check (InvalidRegion), credentials, role
    make_output_store(settings, aws)     # COMFYD_STORAGE=s3        -> S3OutputStore
    make_job_store(settings, aws)        # COMFYD_JOBSTORE=dynamodb -> DynamoJobStore
    make_queue(settings, aws)            # COMFYD_QUEUE=sqs         -> SqsJobQueue
    make_metrics(settings, aws)          # COMFYD_METRICS=cloudwatch -> CloudWatchMetrics / EmfMetrics
    make_notifier(settings, aws)         # COMFYD_SNS_TOPIC set     -> SnsNotifier

`build_aws_services(settings, base)` applies all of them to a dict of embedded defaults.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from comfyd.cloud.aws.session import AwsConfigError, AwsSession, InvalidRegion

if TYPE_CHECKING:
    from comfyd.cloud.aws.cloudwatch import CloudWatchMetrics
    from comfyd.cloud.aws.dynamodb_store import DynamoJobStore
    from comfyd.cloud.aws.s3_store import S3OutputStore
    from comfyd.cloud.aws.sns_notifier import SnsNotifier
    from comfyd.cloud.aws.sqs_queue import SqsJobQueue
    from comfyd.settings import Settings

__all__ = [
    "AwsConfigError", "AwsSession", "InvalidRegion", "build_aws_services", "make_job_store", "make_metrics",
    "make_notifier", "make_output_store", "make_queue", "make_session", "uses_aws",
]


def uses_aws(settings: Settings) -> bool:
    return (
        settings.storage == "s3" or settings.jobstore == "dynamodb" or settings.queue == "sqs"
        or settings.metrics == "cloudwatch" or bool(settings.sns_topic)
    )


def make_session(settings: Settings) -> AwsSession:
    """Validates the region (InvalidRegion) and sets up credentials; no network call."""
    return AwsSession.from_settings(settings)


def _required(settings: Settings, field: str, why: str) -> str:
    value = getattr(settings, field)
    if not value:
        raise AwsConfigError(f"{why} needs COMFYD_{field.upper()}")
    return value


def make_output_store(settings: Settings, aws: AwsSession | None = None) -> S3OutputStore:
    from comfyd.cloud.aws.s3_store import S3OutputStore

    return S3OutputStore(
        aws or make_session(settings),
        _required(settings, "s3_bucket", "COMFYD_STORAGE=s3"),
        settings.s3_prefix,
        spool_dir=settings.spool_dir,
        kms_key_id=settings.s3_kms_key_id,
        cloudfront_domain=settings.cloudfront_domain,
        presign_expiry_s=settings.presign_expiry_s,
        retry_attempts=settings.retry_attempts,
        retry_backoff_s=settings.retry_backoff_s,
        store_wait_s=settings.job_timeout_s,
    )


def make_job_store(settings: Settings, aws: AwsSession | None = None) -> DynamoJobStore:
    from comfyd.cloud.aws.dynamodb_store import DynamoJobStore

    return DynamoJobStore(
        aws or make_session(settings),
        _required(settings, "dynamodb_table", "COMFYD_JOBSTORE=dynamodb"),
        ttl_s=settings.job_ttl_s,
        bucket=settings.s3_bucket,  # large fields (the workflow) go there
        prefix=settings.s3_prefix,
        retry_attempts=settings.retry_attempts,
        retry_backoff_s=settings.retry_backoff_s,
    )


def make_queue(settings: Settings, aws: AwsSession | None = None, *, visibility_timeout_s: int = 60) -> SqsJobQueue:
    from comfyd.cloud.aws.sqs_queue import SqsJobQueue

    return SqsJobQueue(
        aws or make_session(settings),
        _required(settings, "sqs_queue", "COMFYD_QUEUE=sqs"),
        visibility_timeout_s=visibility_timeout_s,
        retry_attempts=settings.retry_attempts,
        retry_backoff_s=settings.retry_backoff_s,
    )


def make_metrics(settings: Settings, aws: AwsSession | None = None) -> CloudWatchMetrics:
    """CloudWatch through PutMetricData (background flush), or EMF on stdout inside Lambda."""
    from comfyd.cloud.aws.cloudwatch import CloudWatchMetrics, EmfMetrics, in_lambda

    if in_lambda():
        return EmfMetrics(settings.cloudwatch_namespace, FunctionName=os.environ["AWS_LAMBDA_FUNCTION_NAME"])
    return CloudWatchMetrics(aws or make_session(settings), settings.cloudwatch_namespace,
                             retry_backoff_s=settings.retry_backoff_s)


def make_notifier(settings: Settings, aws: AwsSession | None = None) -> SnsNotifier:
    from comfyd.cloud.aws.sns_notifier import SnsNotifier

    return SnsNotifier(
        aws or make_session(settings),
        _required(settings, "sns_topic", "the SNS notifier"),
        retry_attempts=settings.retry_attempts,
        retry_backoff_s=settings.retry_backoff_s,
    )


def build_aws_services(settings: Settings, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """`base` (embedded backends by role) with the AWS-configured roles replaced.

    Roles: outputs, jobs, queue, metrics, notifier. One AwsSession serves them all. Raises
    InvalidRegion / AwsConfigError on bad settings, before anything is sent to AWS.
    """
    services = dict(base or {})
    if not uses_aws(settings):
        return services
    aws = make_session(settings)
    if settings.storage == "s3":
        services["outputs"] = make_output_store(settings, aws)
    if settings.jobstore == "dynamodb":
        services["jobs"] = make_job_store(settings, aws)
    if settings.queue == "sqs":
        services["queue"] = make_queue(settings, aws)
    if settings.metrics == "cloudwatch":
        services["metrics"] = make_metrics(settings, aws)
    if settings.sns_topic:
        services["notifier"] = make_notifier(settings, aws)
    services["aws"] = aws
    return services
