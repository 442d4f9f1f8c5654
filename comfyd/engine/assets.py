"""Content-addressed assets and single-use idempotency keys: the records and the interfaces.

An asset is a record (a UUID) over a blob identified by its blake3 hash (`blake3:<hex>`).
Uploaded assets point at a file in the input folder (so LoadImage reads it by name); a job's
outputs are assets too, pointing at their OutputStore key. Many records may share one blob.

Idempotency keys are single use: the first claim of (scope, key) wins and every later claim
fails until the key expires or is released (the submission definitely failed).

The embedded implementation is `comfyd.backends.sqlite_assets`. An AWS one would keep the
records in DynamoDB (conditional puts give the single-use claim) and the blobs in S3.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

IDEMPOTENCY_TTL_S = 24 * 3600.0


@dataclass
class AssetRecord:
    id: str
    hash: str | None  # "blake3:<hex>"
    size: int
    content_type: str
    file_path: str  # the name the client gave (global-namespace-root form, e.g. "photo.png")
    kind: str = "upload"  # upload | output
    location: str = ""  # upload: path relative to the input folder; output: the OutputStore key
    job_id: str | None = None
    node_id: str | None = None
    tags: list[str] = field(default_factory=list)
    created_at: float = field(default_factory=time.time)
    expires_at: float | None = None
    owner: str | None = None  # the principal that created it (None: anyone)


@runtime_checkable
class AssetStore(Protocol):
    def put(self, asset: AssetRecord) -> AssetRecord:
        """Insert; an existing record with this id is returned unchanged instead (ids of job
        outputs are derived from the job, so two readers minting them agree)."""

    def get(self, asset_id: str) -> AssetRecord | None: ...

    def by_hash(self, digest: str) -> list[AssetRecord]:
        """Live records over the blob with this hash, oldest first."""

    def for_job(self, job_id: str) -> list[AssetRecord]:
        """The output assets of one job."""

    def delete(self, asset_id: str) -> bool:
        """Remove the record; False if there was none."""


@runtime_checkable
class IdempotencyKeys(Protocol):
    def claim(self, scope: str, key: str, now: float, ttl_s: float = IDEMPOTENCY_TTL_S) -> bool:
        """Take the key; False if it is held (claimed less than `ttl_s` ago)."""

    def bind(self, scope: str, key: str, resource_id: str) -> None:
        """Record what the key created (kept for diagnostics)."""

    def release(self, scope: str, key: str) -> None:
        """Give the key back: the request it guarded created nothing."""
