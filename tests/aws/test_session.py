"""Credentials, region validation, endpoint override and retry policy of the AWS session."""

from __future__ import annotations

import datetime

import pytest
from botocore.exceptions import ClientError

from comfyd.backends.aws import session_for
from comfyd.backends.aws.session import (
    AwsConfigError,
    AwsSession,
    InvalidRegion,
    known_regions,
    validate_region,
)
from comfyd.backends.faultproxy import Fault, FaultProxy

ROLE = "arn:aws:iam::123456789012:role/comfyd-worker"


def test_known_regions_come_from_botocore_data() -> None:
    regions = known_regions()
    assert regions["us-east-1"] == "aws"
    assert regions["cn-north-1"] == "aws-cn"
    assert regions["us-gov-west-1"] == "aws-us-gov"
    assert "aws-global" not in regions


@pytest.mark.parametrize("region", ["us-east-7", "eu-wset-1", "mars-north-1", "US-EAST-1"])
def test_unknown_region_is_invalid_at_startup(region: str) -> None:
    with pytest.raises(InvalidRegion, match=region):
        AwsSession(region=region)


def test_missing_region_is_invalid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(InvalidRegion, match="no AWS region"):
        validate_region(None)
    with pytest.raises(InvalidRegion, match="no AWS region"):
        AwsSession()


def test_region_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert AwsSession().region == "eu-west-1"
    assert AwsSession(region="ap-southeast-2").region == "ap-southeast-2"


def test_clients_use_endpoint_override_and_standard_retries(local_aws, monkeypatch: pytest.MonkeyPatch) -> None:
    aws = AwsSession(region="us-east-1")
    s3 = aws.client("s3")
    assert s3.meta.endpoint_url == local_aws.url
    assert s3.meta.config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert aws.client("s3") is s3  # one client per service, shared
    monkeypatch.setenv("AWS_ENDPOINT_URL_SQS", "http://127.0.0.1:1")
    assert AwsSession(region="us-east-1").client("sqs").meta.endpoint_url == "http://127.0.0.1:1"
    s3.create_bucket(Bucket="reachable")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["reachable"]


def test_identity_from_sts() -> None:
    ident = AwsSession(region="eu-central-1").identity()
    assert ident.account == "123456789012"
    assert ident.partition == "aws"
    assert ident.region == "eu-central-1"


def test_role_is_assumed_and_credentials_refresh() -> None:
    aws = AwsSession(region="us-east-1", role_arn=ROLE)
    creds = aws.credentials()
    first = creds.get_frozen_credentials()
    assert first.access_key != "testing"  # not the base credentials: STS issued these
    assert first.token
    assert creds.method == "sts-assume-role"
    # Pretend the expiry is near: the next use refreshes through STS by itself.
    creds._expiry_time = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
    second = creds.get_frozen_credentials()
    assert second.access_key != first.access_key
    aws.client("s3").create_bucket(Bucket="made-with-role")  # and the clients use them


def test_bad_role_arn_is_a_config_error() -> None:
    with pytest.raises(AwsConfigError, match="not an IAM role ARN"):
        AwsSession(region="us-east-1", role_arn="comfyd-worker")


def test_disabled_region_is_told_apart_from_bad_credentials(fault_proxy: FaultProxy) -> None:
    # STS in af-south-1 refuses the credentials that the global endpoint accepts: disabled region.
    fault_proxy.add(Fault("error", service="sts", region="af-south-1", status=403, code="InvalidClientTokenId"))
    with pytest.raises(InvalidRegion, match="not enabled"):
        AwsSession(region="af-south-1").verify_region_enabled(force=True)
    AwsSession(region="eu-west-1").verify_region_enabled(force=True)  # enabled: no error
    # Refused everywhere: a credentials problem, reported as such.
    fault_proxy.clear()
    fault_proxy.add(Fault("error", service="sts", status=403, code="InvalidClientTokenId"))
    with pytest.raises(ClientError, match="InvalidClientTokenId"):
        AwsSession(region="af-south-1").verify_region_enabled(force=True)


def test_region_check_skipped_for_local_endpoint(fault_proxy: FaultProxy) -> None:
    fault_proxy.add(Fault("error", service="sts", status=403, code="InvalidClientTokenId"))
    AwsSession(region="af-south-1").verify_region_enabled()  # local endpoint: regions mean nothing


def test_session_for_shares_one_session(settings) -> None:
    assert session_for(settings) is session_for(settings)


def test_serve_refuses_to_start_in_an_unknown_region(tmp_path) -> None:
    import subprocess
    import sys

    env = {"COMFYD_STORAGE": "s3", "COMFYD_S3_BUCKET": "b", "COMFYD_AWS_REGION": "xx-nowhere-9",
           "COMFYD_CONFIG": "/dev/null", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "comfyd", "serve", "--port", "0"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "InvalidRegion" in proc.stderr and "xx-nowhere-9" in proc.stderr


def _no_credentials_env(tmp_path, **extra: str) -> dict[str, str]:
    import os

    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
            "COMFYD_CONFIG": "/dev/null",
            "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "AWS_EC2_METADATA_DISABLED": "true", "COMFYD_AWS_REGION": "us-east-1",
            "COMFYD_STORAGE": "s3", "COMFYD_S3_BUCKET": "b", "COMFYD_QUEUE": "sqs", "COMFYD_SQS_QUEUE": "q",
            "COMFYD_JOBSTORE": "dynamodb", "COMFYD_DYNAMODB_TABLE": "t", **extra}


@pytest.mark.parametrize("command", [["-m", "comfyd", "aws", "init"], ["-m", "comfyd", "serve", "--port", "0"],
                                     ["-m", "comfyd", "worker"], ["-m", "comfyd.worker"]])
def test_missing_credentials_is_one_line_and_exit_1(tmp_path, local_aws, command: list[str]) -> None:
    """Against the local endpoint too (where the region check is skipped): a worker must not
    retry its receive forever without credentials."""
    import subprocess
    import sys

    env = _no_credentials_env(tmp_path, AWS_ENDPOINT_URL=local_aws.url)
    proc = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "MissingCredentials: no AWS credentials found" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_python_m_worker_with_a_bad_region_is_one_line(tmp_path) -> None:
    import subprocess
    import sys

    env = _no_credentials_env(tmp_path, COMFYD_AWS_REGION="xx-nowhere-9", AWS_ACCESS_KEY_ID="k",
                              AWS_SECRET_ACCESS_KEY="s")
    proc = subprocess.run([sys.executable, "-m", "comfyd.worker"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "InvalidRegion" in proc.stderr and "xx-nowhere-9" in proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr


def test_role_without_base_credentials_is_missing_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from comfyd.backends.aws.session import MissingCredentials

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(MissingCredentials):
        AwsSession(region="us-east-1", role_arn=ROLE)
