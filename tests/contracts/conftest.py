"""Each interface of comfyd.engine.interfaces, built by every backend that implements it.

The embedded backends need nothing; the AWS ones talk over real HTTP to one moto server per
session (reset before each AWS test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from comfyd.settings import Settings

EMBEDDED = "embedded"
AWS = "aws"


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[Any]:
    from comfyd.backends.aws.local_endpoint import LocalAwsEndpoint

    endpoint = LocalAwsEndpoint().start()
    yield endpoint
    endpoint.stop()


def _module(name: str) -> Any:
    # comfyd's own modules must import: a failure is a broken package, never a skip.
    return importlib.import_module(name)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        output_dir=tmp_path / "output", db_path=tmp_path / "comfyd.db", spool_dir=tmp_path / "spool",
        s3_bucket="contract-bucket", s3_prefix="c", dynamodb_table="contract-jobs", sqs_queue="contract-jobs",
        sns_topic="contract-events", cloudwatch_namespace="contract", aws_region="us-east-1",
        retry_attempts=2, retry_backoff_s=0.0, job_ttl_s=3600, job_timeout_s=10,
    )


def _aws_session(settings: Settings) -> Any:
    from comfyd.backends.aws.session import AwsSession

    return AwsSession.from_settings(settings)


def _sqlite_db(settings: Settings) -> Any:
    return _module("comfyd.backends.sqlite_store").SqliteDatabase(Path(settings.db_path))


def make_job_store(kind: str, settings: Settings) -> Any:
    if kind == EMBEDDED:
        return _module("comfyd.backends.sqlite_store").SqliteJobStore(_sqlite_db(settings))
    from comfyd.backends.aws import build_job_store
    from comfyd.backends.aws.init import ensure_bucket, ensure_table

    aws = _aws_session(settings)
    ensure_bucket(aws, settings.s3_bucket)
    ensure_table(aws, settings.dynamodb_table)
    return build_job_store(settings, aws)


def make_queue(kind: str, settings: Settings) -> Any:
    if kind == EMBEDDED:
        return _module("comfyd.backends.local_queue").LocalJobQueue(_sqlite_db(settings))
    from comfyd.backends.aws import build_queue
    from comfyd.backends.aws.init import ensure_queues

    aws = _aws_session(settings)
    ensure_queues(aws, settings.sqs_queue)
    return build_queue(settings, aws, visibility_timeout_s=30)


def make_output_store(kind: str, settings: Settings) -> Any:
    if kind == EMBEDDED:
        return _module("comfyd.backends.local_storage").LocalOutputStore(Path(settings.output_dir))
    from comfyd.backends.aws import build_output_store
    from comfyd.backends.aws.init import ensure_bucket

    aws = _aws_session(settings)
    ensure_bucket(aws, settings.s3_bucket)
    return build_output_store(settings, aws)


def make_metrics(kind: str, settings: Settings) -> Any:
    if kind == EMBEDDED:
        return _module("comfyd.backends.prometheus").PrometheusMetrics()
    from comfyd.backends.aws.cloudwatch import CloudWatchMetrics

    return CloudWatchMetrics(_aws_session(settings), settings.cloudwatch_namespace, background=False)


def make_notifier(kind: str, settings: Settings) -> Any:
    if kind == EMBEDDED:
        return _module("comfyd.backends.webhooks").WebhookNotifier(None)
    from comfyd.backends.aws import build_notifier
    from comfyd.backends.aws.init import ensure_topic

    aws = _aws_session(settings)
    ensure_topic(aws, settings.sns_topic)
    return build_notifier(settings, aws)


def _backend_fixture(factory: Callable[[str, Settings], Any]) -> Any:
    @pytest.fixture(params=[EMBEDDED, AWS])
    def fixture(request: pytest.FixtureRequest, settings: Settings, monkeypatch: pytest.MonkeyPatch,
                tmp_path: Path) -> Iterator[Any]:
        backend = factory(_prepare(request, monkeypatch, tmp_path), settings)
        yield backend
        close = getattr(backend, "close", None)
        if callable(close):
            close()

    return fixture


def _prepare(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    kind = request.param
    if kind == AWS:
        endpoint = request.getfixturevalue("moto_endpoint")
        endpoint.reset()
        for name, value in endpoint.environment().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
        monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    return kind


job_store = _backend_fixture(make_job_store)
queue = _backend_fixture(make_queue)
output_store = _backend_fixture(make_output_store)
metrics = _backend_fixture(make_metrics)
notifier = _backend_fixture(make_notifier)


@pytest.fixture
def kind(request: pytest.FixtureRequest) -> str:
    """embedded | aws: the backend kind of this test's parametrised backend fixture."""
    params = request.node.callspec.params
    return next(value for name, value in params.items() if value in (EMBEDDED, AWS))
