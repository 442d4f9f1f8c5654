"""The shared model catalog on S3, and `comfyd models sync` from an S3 prefix.

Each host that runs jobs publishes what its models folders hold (names, sizes, families,
SHA-256 hashes: comfyd.models.catalog) as one manifest, `s3://{bucket}/{prefix}/_models/{host}.json`.
An API host with an empty models folder reads the union of the manifests (refreshed every
`refresh_s`): validation's choices, `/object_info` and `/models/{folder}` list those names, so a
workflow naming a model some worker has is accepted, and one naming a model no worker has gets
ComfyUI's `value_not_in_list` 400 with the list of what exists. Manifests older than `max_age_s`
(a host gone for good) are ignored.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from comfyd.backends.aws.retry import with_backoff
from comfyd.backends.aws.session import AwsSession

log = logging.getLogger(__name__)

CATALOG_FOLDER = "_models"


class S3ModelCatalog:
    def __init__(self, aws: AwsSession, bucket: str, prefix: str = "comfyd", *, refresh_s: float = 30.0,
                 max_age_s: float = 7 * 24 * 3600, retry_attempts: int = 3, retry_backoff_s: float = 1.0) -> None:
        self.bucket = bucket
        self.base = "/".join(p for p in (prefix.strip("/"), CATALOG_FOLDER) if p)
        self.refresh_s = refresh_s
        self.max_age_s = max_age_s
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self._s3 = aws.client("s3")
        self._lock = threading.Lock()
        self._cached: list[dict[str, Any]] | None = None
        self._cached_at = 0.0

    def _retry(self, call: Any, what: str) -> Any:
        return with_backoff(call, attempts=self.retry_attempts, base_s=self.retry_backoff_s, what=what)

    # --- writing -------------------------------------------------------------------------
    def publish(self, host: str, entries: list[dict[str, Any]]) -> str:
        """Replace this host's manifest; its key."""
        safe_host = urllib.parse.quote(host, safe="-_.")
        key = f"{self.base}/{safe_host}.json"
        body = json.dumps({"host": host, "published_at": time.time(), "models": entries}, sort_keys=True).encode()
        self._retry(lambda: self._s3.put_object(Bucket=self.bucket, Key=key, Body=body,
                                                ContentType="application/json"), f"publish {key}")
        with self._lock:
            self._cached = None
        return key

    # --- reading -------------------------------------------------------------------------
    def manifests(self) -> list[dict[str, Any]]:
        """The current manifests of every host (cached for `refresh_s`)."""
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached_at < self.refresh_s:
                return self._cached
        found: list[dict[str, Any]] = []
        paginator = self._s3.get_paginator("list_objects_v2")
        now = time.time()
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.base + "/"):
            for obj in page.get("Contents", []):
                try:
                    body = self._retry(lambda k=obj["Key"]: self._s3.get_object(Bucket=self.bucket, Key=k),
                                       f"read {obj['Key']}")["Body"].read()
                    manifest = json.loads(body)
                except ClientError as exc:  # removed meanwhile
                    log.debug("model manifest %s unreadable: %s", obj["Key"], exc)
                    continue
                except ValueError:
                    log.warning("model manifest %s is not JSON; ignored", obj["Key"])
                    continue
                if now - float(manifest.get("published_at", 0)) <= self.max_age_s:
                    found.append(manifest)
        with self._lock:
            self._cached, self._cached_at = found, time.monotonic()
        return found

    def names(self, folder: str) -> list[str]:
        """Names in `folder` that at least one host holds; [] (and a warning) if S3 fails."""
        try:
            manifests = self.manifests()
        except (ClientError, BotoCoreError) as exc:
            log.warning("model catalog unavailable: %s", exc)
            return []
        return sorted({str(e["name"]) for m in manifests for e in m.get("models", []) if e.get("folder") == folder})

    def entries(self) -> list[dict[str, Any]]:
        """One entry per (folder, name, sha256) with the hosts that hold it."""
        merged: dict[tuple[str, str, str | None], dict[str, Any]] = {}
        for manifest in self.manifests():
            for entry in manifest.get("models", []):
                key = (entry.get("folder"), entry.get("name"), entry.get("sha256"))
                merged.setdefault(key, {**entry, "hosts": []})["hosts"].append(manifest.get("host"))
        return sorted(merged.values(), key=lambda e: (e["folder"], e["name"]))


# --- comfyd models sync ----------------------------------------------------------------------
def parse_s3_url(url: str) -> tuple[str, str]:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{url!r} is not an s3://bucket/prefix URL")
    return parsed.netloc, parsed.path.lstrip("/")


def _expected_sha256(head: dict[str, Any]) -> str | None:
    """The object's SHA-256: our metadata `sha256`, else S3's full-object ChecksumSHA256."""
    meta = (head.get("Metadata") or {}).get("sha256")
    if meta:
        return str(meta).lower()
    checksum = head.get("ChecksumSHA256")
    if checksum and "-" not in checksum:  # a multipart upload's checksum is of its parts
        try:
            return base64.b64decode(checksum).hex()
        except (binascii.Error, ValueError):
            return None
    return None


def _sha256(path: Path) -> str:
    from comfyd.models.catalog import sha256_file

    return sha256_file(path)


def sync_models(aws: AwsSession, source: str, dest: Path) -> dict[str, list[str]]:
    """Fill `dest` (a ComfyUI models folder) from `s3://bucket/prefix`: each object under the
    prefix lands at its relative path, verified against its SHA-256 (metadata `sha256` or S3's
    checksum) when the object has one; files already present with that hash (or, without a hash,
    that size) are kept. Returns {"downloaded", "kept", "unverified"} relative paths; raises
    ValueError for a download whose hash is wrong (the file is not kept)."""
    bucket, prefix = parse_s3_url(source)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = aws.client("s3")
    report: dict[str, list[str]] = {"downloaded": [], "kept": [], "unverified": []}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            relative = obj["Key"][len(prefix):]
            if not relative or relative.endswith("/"):
                continue
            parts = relative.split("/")
            if any(p in ("", ".", "..") for p in parts):
                log.warning("skipping %s: not a safe relative path", obj["Key"])
                continue
            target = dest.joinpath(*parts)
            head = s3.head_object(Bucket=bucket, Key=obj["Key"], ChecksumMode="ENABLED")
            expected = _expected_sha256(head)
            if target.is_file() and target.stat().st_size == obj["Size"] and (
                    expected is None or _sha256(target) == expected):
                report["kept"].append(relative)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
            try:
                s3.download_file(bucket, obj["Key"], str(tmp))
                if expected is not None:
                    digest = hashlib.sha256()
                    with open(tmp, "rb") as handle:
                        while chunk := handle.read(8 * 1024 * 1024):
                            digest.update(chunk)
                    if digest.hexdigest() != expected:
                        raise ValueError(f"{obj['Key']}: SHA-256 {digest.hexdigest()} is not the expected {expected}")
                else:
                    report["unverified"].append(relative)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
            report["downloaded"].append(relative)
    return report
