"""The AWS backends: S3 outputs, DynamoDB jobs, SQS queue, CloudWatch metrics, SNS events.

`comfyd.runtime.build_services` imports this package only when a setting chooses AWS, so boto3
stays out of processes that do not use it. Each factory takes the one Settings object (and,
optionally, an AwsSession; by default the process's shared one for those settings):

    session_for(settings)              # region check (InvalidRegion), credentials, role; cached
    build_output_store(settings)       # COMFYD_STORAGE=s3         -> S3OutputStore
    build_job_store(settings)          # COMFYD_JOBSTORE=dynamodb  -> DynamoJobStore
    build_queue(settings)              # COMFYD_QUEUE=sqs          -> SqsJobQueue
    build_metrics(settings)            # COMFYD_METRICS=cloudwatch -> CloudWatchMetrics / EmfMetrics
    build_notifier(settings)           # COMFYD_SNS_TOPIC set      -> SnsNotifier
    build_model_catalog(settings)      # COMFYD_STORAGE=s3         -> S3ModelCatalog (shared models)
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import TYPE_CHECKING

from comfyd.backends.aws.session import AwsConfigError, AwsSession, InvalidRegion, MissingCredentials

if TYPE_CHECKING:
    from comfyd.backends.aws.cloudwatch import CloudWatchMetrics
    from comfyd.backends.aws.dynamodb_store import DynamoJobStore
    from comfyd.backends.aws.model_catalog import S3ModelCatalog
    from comfyd.backends.aws.s3_store import S3OutputStore
    from comfyd.backends.aws.sns_notifier import SnsNotifier
    from comfyd.backends.aws.sqs_queue import SqsJobQueue
    from comfyd.settings import Settings

__all__ = [
    "AwsConfigError", "AwsSession", "InvalidRegion", "MissingCredentials", "build_job_store", "build_metrics",
    "build_model_catalog", "build_notifier",
    "build_output_store", "build_queue", "session_for", "uses_aws",
]


def uses_aws(settings: Settings) -> bool:
    return (
        settings.storage == "s3" or settings.jobstore == "dynamodb" or settings.queue == "sqs"
        or settings.metrics == "cloudwatch" or bool(settings.sns_topic)
    )


def session_for(settings: Settings) -> AwsSession:
    """The process's AwsSession for these settings' region and role (one per pair: the backends
    share clients and, with a role, one set of refreshing credentials). Raises InvalidRegion."""
    region = settings.aws_region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return _shared_session(region, settings.aws_role_arn, os.environ.get("AWS_ENDPOINT_URL"))


@lru_cache(maxsize=8)
def _shared_session(region: str | None, role_arn: str | None, endpoint: str | None) -> AwsSession:
    # `endpoint` is part of the key only so that pointing AWS_ENDPOINT_URL elsewhere (tests, a
    # fault proxy) gets clients for the new endpoint.
    return AwsSession(region=region, role_arn=role_arn)


def _required(settings: Settings, field: str, why: str) -> str:
    value = getattr(settings, field)
    if not value:
        raise AwsConfigError(f"{why} needs COMFYD_{field.upper()}")
    return value


def build_output_store(settings: Settings, aws: AwsSession | None = None) -> S3OutputStore:
    from comfyd.backends.aws.s3_store import S3OutputStore

    return S3OutputStore(
        aws or session_for(settings),
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


def build_job_store(settings: Settings, aws: AwsSession | None = None, *, api_only: bool = False) -> DynamoJobStore:
    """`api_only`: for an API process (deploy/iam-policy-api.json has no s3:DeleteObject), which
    leaves stale offloaded state to the bucket's lifecycle rule instead of deleting it."""
    from comfyd.backends.aws.dynamodb_store import DynamoJobStore

    return DynamoJobStore(
        aws or session_for(settings),
        _required(settings, "dynamodb_table", "COMFYD_JOBSTORE=dynamodb"),
        ttl_s=settings.job_ttl_s,
        bucket=settings.s3_bucket,  # large fields (the workflow) go there
        prefix=settings.s3_prefix,
        retry_attempts=settings.retry_attempts,
        retry_backoff_s=settings.retry_backoff_s,
        delete_stale_state=not api_only,
    )


def build_model_catalog(settings: Settings, aws: AwsSession | None = None) -> S3ModelCatalog:
    """The shared model catalog (manifests beside the outputs, `{prefix}/_models/`)."""
    from comfyd.backends.aws.model_catalog import S3ModelCatalog

    return S3ModelCatalog(aws or session_for(settings), _required(settings, "s3_bucket", "the model catalog"),
                          settings.s3_prefix, retry_attempts=settings.retry_attempts,
                          retry_backoff_s=settings.retry_backoff_s)


def build_queue(settings: Settings, aws: AwsSession | None = None, *, visibility_timeout_s: int = 60) -> SqsJobQueue:
    from comfyd.backends.aws.sqs_queue import SqsJobQueue

    return SqsJobQueue(
        aws or session_for(settings),
        _required(settings, "sqs_queue", "COMFYD_QUEUE=sqs"),
        visibility_timeout_s=visibility_timeout_s,
        retry_attempts=settings.retry_attempts,
        retry_backoff_s=settings.retry_backoff_s,
    )


def build_metrics(settings: Settings, aws: AwsSession | None = None) -> CloudWatchMetrics:
    """CloudWatch through PutMetricData (background flush), or EMF on stdout inside Lambda."""
    from comfyd.backends.aws.cloudwatch import CloudWatchMetrics, EmfMetrics, in_lambda

    if in_lambda():
        return EmfMetrics(settings.cloudwatch_namespace, FunctionName=os.environ["AWS_LAMBDA_FUNCTION_NAME"])
    return CloudWatchMetrics(aws or session_for(settings), settings.cloudwatch_namespace,
                             retry_backoff_s=settings.retry_backoff_s)


def build_notifier(settings: Settings, aws: AwsSession | None = None) -> SnsNotifier:
    from comfyd.backends.aws.sns_notifier import SnsNotifier

    return SnsNotifier(
        aws or session_for(settings),
        _required(settings, "sns_topic", "the SNS notifier"),
        retry_attempts=settings.retry_attempts,
        retry_backoff_s=settings.retry_backoff_s,
    )
