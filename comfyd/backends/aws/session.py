"""One boto3 session for the process: credentials, region, endpoint and retry policy.

Credentials come from boto3's default chain (environment, shared files, container/instance
roles). With `COMFYD_AWS_ROLE_ARN` set, those base credentials assume the role through STS and
the assumed credentials refresh themselves before they expire (botocore's
RefreshableCredentials), so a worker that runs for days never holds stale keys.

The region is checked at start-up against botocore's own partition data (offline): a typo or a
region this botocore does not know fails with InvalidRegion before any job is accepted.
`verify_region_enabled` additionally tells a disabled opt-in region apart from bad credentials.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import botocore
import botocore.loaders
import botocore.session
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError, NoCredentialsError

if TYPE_CHECKING:
    from comfyd.settings import Settings

# botocore's standard retry mode: throttling and transient errors, 3 attempts in all, exponential
# backoff with jitter. Past that, callers apply the project's own backoff (retry.py).
RETRY_CONFIG = {"mode": "standard", "total_max_attempts": 3}
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 30
ASSUME_ROLE_DURATION_S = 3600
_SESSION_NAME_UNSAFE = re.compile(r"[^\w+=,.@-]")
# Error codes STS gives for credentials presented to a region the account has not enabled.
_REGION_DISABLED_CODES = {"InvalidClientTokenId", "UnrecognizedClientException", "AuthFailure"}


class InvalidRegion(ValueError):
    """The configured AWS region is unknown, missing or not enabled for the account."""


class AwsConfigError(ValueError):
    """An AWS backend was chosen but a setting it needs is missing or malformed."""


class MissingCredentials(AwsConfigError):
    """boto3's credential chain found nothing (no keys, profile, container or instance role)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(
            "no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "or run with an instance/container role" + (f" ({detail})" if detail else "")
        )


@cache
def known_regions() -> dict[str, str]:
    """region -> partition, from the partition data shipped inside botocore (no network)."""
    data_dir = Path(botocore.__file__).parent / "data"
    regions: dict[str, str] = {}
    partitions_file = data_dir / "partitions.json"
    if partitions_file.is_file():
        for partition in json.loads(partitions_file.read_text())["partitions"]:
            for name in partition.get("regions", {}):
                if not name.endswith("-global"):  # pseudo-regions for global endpoints
                    regions[name] = partition["id"]
    endpoints = json.loads((data_dir / "endpoints.json").read_text())
    for partition in endpoints["partitions"]:
        for name in partition.get("regions", {}):
            regions.setdefault(name, partition["partition"])
    return regions


@cache
def _service_model_loader() -> botocore.loaders.Loader:
    """One loader per process: it caches the parsed service models (read-only data), which makes
    every client after the first of its service ~10x cheaper to create."""
    return botocore.loaders.create_loader()


def _new_botocore_session() -> botocore.session.Session:
    core = botocore.session.get_session()
    core.register_component("data_loader", _service_model_loader())
    return core


def validate_region(region: str | None) -> str:
    """The region, stripped; InvalidRegion if it is missing or not a region botocore knows."""
    if region is None or not region.strip():
        raise InvalidRegion(
            "no AWS region configured: set COMFYD_AWS_REGION (or AWS_REGION / AWS_DEFAULT_REGION)"
        )
    name = region.strip()
    if name not in known_regions():
        raise InvalidRegion(
            f"unknown AWS region {name!r} (from COMFYD_AWS_REGION / AWS_REGION): not in botocore "
            f"{botocore.__version__}'s partition data; check the spelling, or upgrade botocore if the "
            "region is new"
        )
    return name


def partition_of(region: str) -> str:
    return known_regions().get(region, "aws")


def endpoint_override(service: str) -> str | None:
    """AWS_ENDPOINT_URL_<SERVICE>, else AWS_ENDPOINT_URL, else None (the real AWS endpoint)."""
    specific = os.environ.get(f"AWS_ENDPOINT_URL_{service.upper().replace('-', '_')}")
    return specific or os.environ.get("AWS_ENDPOINT_URL") or None


def role_session_name() -> str:
    raw = f"comfyd-{socket.gethostname()}-{os.getpid()}"
    return _SESSION_NAME_UNSAFE.sub("-", raw)[:64]


@dataclass(frozen=True)
class AwsIdentity:
    account: str
    arn: str
    partition: str
    region: str


class AwsSession:
    """The process's AWS access: `client(service)` gives a shared, thread-safe client.

    Clients are created once per service (creating them is slow and not thread-safe; using them
    is thread-safe) with the standard retry mode, explicit timeouts and any endpoint override.
    """

    def __init__(
        self,
        region: str | None = None,
        role_arn: str | None = None,
        *,
        boto_session: boto3.Session | None = None,
        max_attempts: int = RETRY_CONFIG["total_max_attempts"],
    ) -> None:
        base = boto_session or boto3.Session(botocore_session=_new_botocore_session())
        self.region = validate_region(region or os.environ.get("AWS_REGION") or base.region_name)
        self.role_arn = role_arn
        self._max_attempts = max_attempts
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}
        self._identity: AwsIdentity | None = None
        # Every client names the region explicitly, so the session's own default does not matter.
        self.boto = self._assumed_role_session(base, role_arn) if role_arn else base

    @classmethod
    def from_settings(cls, settings: Settings) -> AwsSession:
        return cls(region=settings.aws_region, role_arn=settings.aws_role_arn)

    # --- credentials -------------------------------------------------------------------
    def _assumed_role_session(self, base: boto3.Session, role_arn: str) -> boto3.Session:
        if not role_arn.startswith("arn:") or ":role/" not in role_arn:
            raise AwsConfigError(f"COMFYD_AWS_ROLE_ARN={role_arn!r} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>)")
        if base.get_credentials() is None:
            raise MissingCredentials(f"needed to assume {role_arn}")
        sts = base.client("sts", region_name=self.region, endpoint_url=endpoint_override("sts"), config=self._config("sts"))

        def fetch() -> dict[str, str]:
            try:
                creds = sts.assume_role(
                    RoleArn=role_arn, RoleSessionName=role_session_name(), DurationSeconds=ASSUME_ROLE_DURATION_S
                )["Credentials"]
            except NoCredentialsError:
                raise MissingCredentials(f"needed to assume {role_arn}") from None
            return {
                "access_key": creds["AccessKeyId"],
                "secret_key": creds["SecretAccessKey"],
                "token": creds["SessionToken"],
                "expiry_time": creds["Expiration"].isoformat(),
            }

        # botocore refreshes these 15 minutes before expiry (and blocks callers only in the last 10).
        refreshable = RefreshableCredentials.create_from_metadata(
            metadata=fetch(), refresh_using=fetch, method="sts-assume-role"
        )
        core = _new_botocore_session()
        core._credentials = refreshable  # the documented way to hand a session fixed credentials
        return boto3.Session(botocore_session=core, region_name=self.region)

    def credentials(self) -> Any:
        return self.boto.get_credentials()

    def verify_credentials(self) -> None:
        """MissingCredentials when the chain resolves none: a one-line start-up error instead of a
        NoCredentialsError traceback on the first call (or a worker retrying its receive forever)."""
        if self.credentials() is None:
            raise MissingCredentials()

    def verify(self) -> None:
        """Start-up checks of every edge that uses AWS: credentials, then the region."""
        self.verify_credentials()
        self.verify_region_enabled()

    # --- clients -----------------------------------------------------------------------
    def _config(self, service: str) -> Config:
        options: dict[str, Any] = {
            # total_max_attempts counts the first try (`max_attempts` would not).
            "retries": {"mode": RETRY_CONFIG["mode"], "total_max_attempts": self._max_attempts},
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "max_pool_connections": 32,
        }
        if service == "s3":
            options["signature_version"] = "s3v4"  # presigned URLs for SSE-KMS objects need SigV4
            if endpoint_override("s3"):
                options["s3"] = {"addressing_style": "path"}  # local endpoints have no bucket DNS
        return Config(**options)

    def client(self, service: str) -> Any:
        with self._lock:
            found = self._clients.get(service)
            if found is None:
                found = self.boto.client(
                    service, region_name=self.region, endpoint_url=endpoint_override(service),
                    config=self._config(service),
                )
                self._clients[service] = found
            return found

    # --- identity and region -----------------------------------------------------------
    def identity(self) -> AwsIdentity:
        """Account and caller ARN (STS GetCallerIdentity needs no IAM permission); cached."""
        if self._identity is None:
            reply = self.client("sts").get_caller_identity()
            self._identity = AwsIdentity(
                account=reply["Account"], arn=reply["Arn"], partition=partition_of(self.region), region=self.region
            )
        return self._identity

    def verify_region_enabled(self, *, force: bool = False) -> None:
        """InvalidRegion if the account has not enabled this (opt-in) region.

        Credentials are refused by a disabled region's STS endpoint but accepted by the global
        one; bad credentials are refused by both, so the two are told apart. Skipped against a
        local endpoint (AWS_ENDPOINT_URL), where regions mean nothing, unless `force`.
        """
        if endpoint_override("sts") and not force:
            return
        try:
            self.identity()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in _REGION_DISABLED_CODES:
                raise
            global_sts = self.boto.client(
                "sts", region_name="us-east-1", endpoint_url=endpoint_override("sts"), config=self._config("sts")
            )
            try:
                global_sts.get_caller_identity()
            except ClientError:
                raise exc from None  # bad credentials everywhere: not a region problem
            raise InvalidRegion(
                f"AWS region {self.region!r} is not enabled for this account (STS there refused the "
                "credentials that the global endpoint accepts); enable it or choose another region"
            ) from exc
