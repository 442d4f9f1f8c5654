"""Local AWS for these tests: one moto server per session over real HTTP, reset per test.

boto3 reaches it through AWS_ENDPOINT_URL with dummy credentials; botocore's backoff sleeps are
set to zero (the retries themselves still happen, and tests count them through the fault proxy).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from botocore.retries.standard import ExponentialBackoff

from comfyd.backends.aws.init import aws_init
from comfyd.backends.aws.local_endpoint import LocalAwsEndpoint
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.faultproxy import FaultProxy
from comfyd.runtime import Services
from comfyd.settings import Settings


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[LocalAwsEndpoint]:
    endpoint = LocalAwsEndpoint().start()
    yield endpoint
    endpoint.stop()


@pytest.fixture(autouse=True)
def local_aws(moto_endpoint: LocalAwsEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> LocalAwsEndpoint:
    moto_endpoint.reset()
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_LAMBDA_FUNCTION_NAME", "AWS_ROLE_ARN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in moto_endpoint.environment().items():
        monkeypatch.setenv(name, value)
    # No developer's ~/.aws may leak in.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    monkeypatch.setattr(ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    return moto_endpoint


@pytest.fixture
def fault_proxy(moto_endpoint: LocalAwsEndpoint, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A fault proxy in front of moto; boto3 clients created after this go through it."""
    with FaultProxy(moto_endpoint.url) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        yield proxy


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        storage="s3", s3_bucket="comfyd-test", s3_prefix="out", spool_dir=tmp_path / "spool",
        jobstore="dynamodb", dynamodb_table="comfyd-jobs", job_ttl_s=3600,
        queue="sqs", sqs_queue="comfyd-jobs", metrics="cloudwatch", cloudwatch_namespace="comfyd-test",
        sns_topic="comfyd-events", aws_region="us-east-1",
        retry_attempts=2, retry_backoff_s=0.0, job_timeout_s=30,
        output_dir=tmp_path / "output", db_path=tmp_path / "comfyd.db",
    )


@pytest.fixture
def aws(settings: Settings) -> AwsSession:
    return AwsSession.from_settings(settings)


@pytest.fixture
def provisioned(settings: Settings, aws: AwsSession) -> dict:
    """The resources `comfyd aws init` makes for `settings`."""
    return aws_init(settings, aws)


def _load_fake_runtime() -> ModuleType:
    # Loaded by path: test folders are not packages (pytest's importlib mode). Subprocess workers
    # import it with this folder on PYTHONPATH as `fake_runtime`.
    if "fake_runtime" not in sys.modules:
        spec = importlib.util.spec_from_file_location("fake_runtime", Path(__file__).with_name("fake_runtime.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["fake_runtime"] = module
        spec.loader.exec_module(module)
    return sys.modules["fake_runtime"]


@pytest.fixture
def fake_runtime() -> ModuleType:
    return _load_fake_runtime()


class RecordingNotifier:
    """Delegates to the real notifier and keeps (event, job id, status) of every publish."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.events: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()

    def publish(self, event: str, payload: dict[str, Any], attributes: dict[str, str] | None = None) -> None:
        with self._lock:
            self.events.append((event, str(payload.get("id")), str(payload.get("status"))))
        self.inner.publish(event, payload, attributes)

    def completed(self, job_id: str) -> list[str]:
        with self._lock:
            return [status for event, jid, status in self.events if event == "job.completed" and jid == job_id]


@pytest.fixture
def recording() -> Callable[[Services], Services]:
    """Services with their notifier wrapped in a RecordingNotifier (`services.notifier.completed(id)`)."""
    return lambda built: dataclasses.replace(built, notifier=RecordingNotifier(built.notifier))
