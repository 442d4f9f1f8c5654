"""OutputStore on S3: `s3://bucket/prefix/{job_id}/{filename}`.

Each object carries its content type and user metadata (job id, workflow hash, seed, as given
by the job layer), optionally SSE-KMS. Clients get a presigned GET URL, or a CloudFront URL when
`COMFYD_CLOUDFRONT_DOMAIN` names a distribution whose origin is the bucket.

Durability: an upload is tried with botocore's standard retries, then the project's backoff
(retry.py); if S3 still fails, the bytes are spooled to local disk (spool.py) and re-uploaded in
the background. `put` returns only once the object is in S3, so the job layer never reports a
job finished before its outputs are stored; if S3 stays down past `store_wait_s`, `put` raises
OutputNotStoredError (retryable) while the spooled copy keeps waiting for S3: never lost.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from boto3.s3.transfer import TransferConfig
from botocore.exceptions import BotoCoreError, ClientError

from comfyd.backends.aws.retry import is_transient, with_backoff
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.aws.spool import Spool, SpoolEntry
from comfyd.engine.errors import OutputsPendingError
from comfyd.engine.interfaces import StoredOutput

log = logging.getLogger(__name__)

_SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9._\- ()+=@,]+$")
_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_METADATA_VALUE_MAX = 256  # S3 allows 2 KB of user metadata in all
# Objects above this go through multipart upload (boto3's transfer manager) instead of one PUT.
MULTIPART_THRESHOLD = 16 * 1024**2
MULTIPART_CHUNK = 8 * 1024**2


class OutputNotStoredError(OutputsPendingError):
    """S3 did not take an output in time; it waits in the local spool and will be uploaded."""

    def __init__(self, key: str, spool_path: Path, cause: BaseException) -> None:
        super().__init__(
            f"output {key} is not in S3 yet ({type(cause).__name__}: {cause}); it is kept at "
            f"{spool_path} and uploaded when S3 answers again", [key],
        )
        self.key = key
        self.spool_path = spool_path


def _check_segment(what: str, value: str) -> str:
    if not value or value in (".", "..") or not _SAFE_SEGMENT.match(value):
        raise ValueError(f"{what} {value!r} is not a safe S3 key segment (letters, digits, . _ - ( ) + = @ , and space)")
    return value


def _metadata_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9-]", "-", name.strip().lower().replace("_", "-"))
    if not key.strip("-"):
        raise ValueError(f"output metadata name {name!r} has no usable characters")
    return key


def _metadata_value(value: object) -> str:
    # User metadata travels in HTTP headers: ASCII only; anything else is percent-encoded.
    text = urllib.parse.quote(str(value), safe=" !#$&'()*+,-./:;=?@[]^_`{|}~")
    return text[:_METADATA_VALUE_MAX]


class S3OutputStore:
    def __init__(
        self,
        aws: AwsSession,
        bucket: str,
        prefix: str = "comfyd",
        *,
        spool_dir: Path,
        kms_key_id: str | None = None,
        cloudfront_domain: str | None = None,
        presign_expiry_s: int = 3600,
        retry_attempts: int = 3,
        retry_backoff_s: float = 1.0,
        store_wait_s: float = 600.0,
        spool_interval_s: float = 1.0,
    ) -> None:
        if not bucket:
            raise ValueError("COMFYD_STORAGE=s3 needs COMFYD_S3_BUCKET")
        if not 1 <= presign_expiry_s <= 7 * 24 * 3600:
            raise ValueError(f"COMFYD_PRESIGN_EXPIRY_S={presign_expiry_s}: SigV4 presigned URLs last 1 s .. 7 days")
        self.aws = aws
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.kms_key_id = kms_key_id
        self.cloudfront_domain = _cloudfront_base(cloudfront_domain)
        self.presign_expiry_s = presign_expiry_s
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self.store_wait_s = store_wait_s
        self._s3 = aws.client("s3")
        self.spool = Spool(Path(spool_dir), self._upload_entry, min_interval_s=spool_interval_s, max_interval_s=5.0)
        if self.spool.entries():  # leftovers of an earlier process: upload them now
            log.warning("%d spooled output(s) found in %s; uploading", len(self.spool.entries()), spool_dir)
            self.spool.ensure_running()

    # --- keys and URLs -------------------------------------------------------------------
    def key_for(self, job_id: str, filename: str) -> str:
        parts = [_check_segment("job id", job_id)]
        for segment in filename.split("/"):  # subfolders are allowed, traversal is not
            parts.append(_check_segment("output filename", segment))
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def url(self, key: str) -> str | None:
        if self.cloudfront_domain:
            return f"{self.cloudfront_domain}/{urllib.parse.quote(key)}"
        return self._s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.presign_expiry_s
        )

    def _extra_args(self, content_type: str, metadata: dict[str, str]) -> dict[str, Any]:
        args: dict[str, Any] = {"ContentType": content_type, "Metadata": metadata}
        if self.kms_key_id:
            args["ServerSideEncryption"] = "aws:kms"
            args["SSEKMSKeyId"] = self.kms_key_id
        return args

    # --- put -----------------------------------------------------------------------------
    def put(
        self, job_id: str, filename: str, data: bytes, content_type: str = "image/png",
        metadata: dict[str, str] | None = None,
    ) -> StoredOutput:
        key = self.key_for(job_id, filename)
        meta = {_metadata_key(k): _metadata_value(v) for k, v in (metadata or {}).items()}
        meta["job-id"] = _metadata_value(job_id)
        entry = SpoolEntry(bucket=self.bucket, key=key, content_type=content_type, metadata=meta,
                           extra_args=self._extra_args(content_type, meta))
        try:
            with_backoff(lambda: self._upload_entry(entry, data), attempts=self.retry_attempts,
                         base_s=self.retry_backoff_s, what=f"upload of s3://{self.bucket}/{key}")
        except (ClientError, BotoCoreError) as exc:
            path = self.spool.write(entry, data)
            log.warning("S3 refused s3://%s/%s (%s); spooled to %s", self.bucket, key, exc, path)
            # Waiting helps only for S3 being down, not for a missing bucket or a denied key.
            if not is_transient(exc) or not self.spool.wait_uploaded(path, self.store_wait_s):
                raise OutputNotStoredError(key, path, exc) from exc
        self._index_output(filename, key)
        return StoredOutput(key=key, url=self.url(key), size=len(data), content_type=content_type)

    # --- across hosts: the output name index and shared inputs ---------------------------
    # GET /view names an output by (subfolder/)filename only; an API host that did not run the
    # job finds its key through a small pointer object `{prefix}/_by-name/{filename}`. Inputs are
    # stored by content (`{prefix}/_inputs/sha256/{hex}{ext}`) with a pointer per uploaded name
    # (`{prefix}/_inputs/names/{name}`); a job records the content keys it was validated with.
    def _pointer_key(self, kind: str, name: str) -> str:
        parts = [_check_segment("file name", segment) for segment in name.split("/")]
        return "/".join([p for p in (self.prefix, kind) if p] + parts)

    def _put_small(self, key: str, body: bytes, content_type: str) -> None:
        args = self._extra_args(content_type, {})
        with_backoff(lambda: self._s3.put_object(Bucket=self.bucket, Key=key, Body=body, **args),
                     attempts=self.retry_attempts, base_s=self.retry_backoff_s, what=f"put of {key}")

    def _read_pointer(self, key: str) -> str | None:
        try:
            return self.get(key).decode()
        except KeyError:
            return None

    def _index_output(self, filename: str, key: str) -> None:
        try:
            self._put_small(self._pointer_key("_by-name", filename), key.encode(), "text/plain")
        except (ClientError, BotoCoreError, ValueError) as exc:  # /view on other hosts misses it; the job is fine
            log.warning("could not index output %s by name: %s", key, exc)

    def output_key_by_name(self, filename: str) -> str | None:
        """The key of the latest output stored under this (subfolder/)filename, by any host."""
        return self._read_pointer(self._pointer_key("_by-name", filename))

    def put_input(self, name: str, data: bytes) -> str:
        """Store an uploaded input by content and point `name` at it; the content key."""
        suffix = Path(name).suffix.lower()
        content_key = "/".join(p for p in (self.prefix, "_inputs", "sha256", hashlib.sha256(data).hexdigest() + suffix) if p)
        self._put_small(content_key, data, "application/octet-stream")
        self._put_small(self._pointer_key("_inputs/names", name), content_key.encode(), "text/plain")
        return content_key

    def input_key(self, name: str) -> str | None:
        """The content key the input `name` was last uploaded as, by any host; None if never."""
        try:
            return self._read_pointer(self._pointer_key("_inputs/names", name))
        except ValueError:  # not a name an upload could have made
            return None

    def fetch_input(self, content_key: str, dest: Path) -> None:
        """Put the input's bytes at `dest` (atomically), unless the same content is there."""
        digest = Path(content_key).stem
        if dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == digest:
            return
        data = self.get(content_key)
        if hashlib.sha256(data).hexdigest() != digest:
            raise ValueError(f"input {content_key} does not match its checksum")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    # --- outputs that wait in the spool -------------------------------------------------
    def spool_put(
        self, job_id: str, filename: str, data: bytes, content_type: str = "image/png",
        metadata: dict[str, str] | None = None,
    ) -> StoredOutput:
        """Keep an output in the spool for the background upload, without trying S3 first or
        waiting (S3 just refused another output of the same job)."""
        key = self.key_for(job_id, filename)
        meta = {_metadata_key(k): _metadata_value(v) for k, v in (metadata or {}).items()}
        meta["job-id"] = _metadata_value(job_id)
        entry = SpoolEntry(bucket=self.bucket, key=key, content_type=content_type, metadata=meta,
                           extra_args=self._extra_args(content_type, meta))
        self.spool.write(entry, data)
        return StoredOutput(key=key, url=None, size=len(data), content_type=content_type)

    def await_stored(self, keys: list[str], timeout: float) -> bool:
        """True once every key is in S3: at once, or after this host's spool uploaded the ones
        it holds (waiting up to `timeout`). False if a key is neither in S3 nor in this host's
        spool (another host's spool, or lost): the job must render it again."""
        deadline = time.monotonic() + timeout
        for key in keys:
            while not self._exists(key):
                if self.spool.find(self.bucket, key) is None or time.monotonic() >= deadline:
                    if self._exists(key):
                        break  # uploaded between the two looks
                    return False
                self.spool.ensure_running()
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            relative = key.removeprefix(f"{self.prefix}/" if self.prefix else "").split("/", 1)
            if len(relative) == 2:  # a spooled output was never indexed by name (GET /view)
                self._index_output(relative[1], key)
        return True

    def _exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                return False
            raise

    def _upload_entry(self, entry: SpoolEntry, data: bytes) -> None:
        if len(data) < MULTIPART_THRESHOLD:
            self._s3.put_object(Bucket=entry.bucket, Key=entry.key, Body=io.BytesIO(data), **entry.extra_args)
        else:
            transfer = TransferConfig(multipart_threshold=MULTIPART_THRESHOLD,
                                      multipart_chunksize=min(MULTIPART_CHUNK, MULTIPART_THRESHOLD), use_threads=False)
            self._s3.upload_fileobj(io.BytesIO(data), entry.bucket, entry.key, ExtraArgs=entry.extra_args, Config=transfer)

    # --- get -----------------------------------------------------------------------------
    def get(self, key: str) -> bytes:
        """The object's bytes (from the spool if it is still waiting there); KeyError if absent."""
        try:
            reply = with_backoff(lambda: self._s3.get_object(Bucket=self.bucket, Key=key),
                                 attempts=self.retry_attempts, base_s=self.retry_backoff_s, what=f"get of {key}")
            return reply["Body"].read()
        except (ClientError, BotoCoreError) as exc:
            spooled = self.spool.find(self.bucket, key)
            if spooled is not None:
                return spooled
            if isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") in _MISSING_CODES:
                raise KeyError(key) from None
            raise

    def head(self, key: str) -> dict[str, Any]:
        """Content type and user metadata of a stored object."""
        reply = self._s3.head_object(Bucket=self.bucket, Key=key)
        return {"content_type": reply.get("ContentType"), "metadata": reply.get("Metadata", {}),
                "size": reply.get("ContentLength", 0), "sse": reply.get("ServerSideEncryption")}

    def pending(self) -> int:
        """Outputs waiting in the spool for S3."""
        return len(self.spool.entries())

    def flush(self, timeout: float = 30.0) -> bool:
        """Upload what the spool holds, waiting up to `timeout`; True if it is empty."""
        deadline = time.monotonic() + timeout
        while self.spool.entries():
            self.spool.drain_once()
            if not self.spool.entries() or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
        return not self.spool.entries()

    def close(self) -> None:
        self.spool.stop()


def _cloudfront_base(domain: str | None) -> str | None:
    if not domain:
        return None
    text = domain.strip().rstrip("/")
    if not text.startswith(("https://", "http://")):
        text = "https://" + text
    return text
