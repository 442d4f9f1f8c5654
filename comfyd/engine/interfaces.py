"""The interfaces the engine needs from the outside world.

The engine defines them and never imports `comfyd.backends`; the edges (server, CLI, worker,
Lambda) build the configured implementations (embedded: files, SQLite, in-process queue,
Prometheus text; AWS: S3, DynamoDB, SQS, CloudWatch, SNS) and hand them in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol, runtime_checkable


class JobStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMED_OUT})


@dataclass
class JobRecord:
    """One job, as the job store keeps it. Every field is JSON-serialisable."""

    id: str
    workflow: dict[str, Any]  # the API-format prompt, as submitted (after graph-form conversion)
    status: JobStatus = JobStatus.QUEUED
    priority: int = 1  # 1..10, higher runs first
    number: int = 0  # ComfyUI's queue number (monotonic per server)
    node_id: str = "3"  # the node whose progress is the job's progress
    execution_mode: str = "sequential"
    client_id: str | None = None
    extra_data: dict[str, Any] = field(default_factory=dict)
    source: str = "prompt"  # prompt | prediction | generate | lambda
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker_id: str | None = None
    progress: dict[str, Any] = field(default_factory=dict)  # {value, max, node}
    outputs: dict[str, Any] = field(default_factory=dict)  # node id -> ComfyUI UI output
    # Storage keys of the stored outputs (OutputStore.put's StoredOutput.key). URLs are made from
    # them when a job is shown (`OutputStore.url`), so a presigned URL is always fresh.
    output_keys: list[str] = field(default_factory=list)
    output_urls: list[str] = field(default_factory=list)  # only in records written before output_keys
    # Set when an attempt rendered its outputs but the store had not taken them yet (they wait in
    # a spool; `outputs` and `output_keys` hold them): the retry completes from them, no re-render.
    outputs_spooled: bool = False
    node_timings: dict[str, float] = field(default_factory=dict)  # node id -> seconds
    error: dict[str, Any] | None = None  # {type, message, node_id, node_type, traceback}
    messages: list[list[Any]] = field(default_factory=list)  # ComfyUI history status messages
    expires_at: float | None = None  # TTL; readers treat a past value as gone
    # Scale-out bookkeeping (see docs/aws.md): when its queue message was confirmed sent (None:
    # never, so a sweeper may send it), a sweeper's lease on sending it again, and the reason a
    # client asked to stop it ("canceled" | "interrupted"), which the worker running it polls.
    enqueued_at: float | None = None
    requeue_claimed_at: float | None = None
    cancel_requested: str | None = None
    # The holder's lease while the job runs: its last heartbeat (set at the claim, renewed by the
    # SQS worker's heartbeat) and how long that beat stays valid (None: the reader's own lease).
    # A worker takes a running job over only once the lease has lapsed (comfyd/worker.py).
    heartbeat_at: float | None = None
    lease_s: float | None = None


@runtime_checkable
class JobStore(Protocol):
    """Durable job records. Transitions are conditional so two workers never own one job."""

    def create(self, job: JobRecord) -> bool:
        """Insert; False (and no change) if a job with this id exists already."""

    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if absent or expired."""

    def transition(
        self, job_id: str, expected: set[JobStatus], new: JobStatus, *, holder: str | None = None, **fields: Any
    ) -> bool:
        """Set status to `new` (and `fields`) only if the current status is in `expected` and,
        when `holder` is given, the job's `worker_id` is `holder` (a worker ending its own run
        must not end one another worker took over)."""

    def update(self, job_id: str, **fields: Any) -> None:
        """Set fields without a status change (progress, timings)."""

    def list(self, status: set[JobStatus] | None = None, limit: int = 100) -> list[JobRecord]:
        """Jobs, newest first (by created_at), optionally filtered by status."""

    def delete(self, job_id: str) -> None: ...

    def request_cancel(self, job_id: str, reason: str) -> bool:
        """Set `cancel_requested = reason` only while the job is queued or running (a conditional
        write: a finished job is never touched). True if recorded."""

    def cancel_requested(self, job_id: str) -> str | None:
        """The recorded cancel reason, or None. A cheap read: workers poll it while a job runs."""

    def list_unsent(self, created_before: float, limit: int = 100) -> list[JobRecord]:
        """Queued jobs created before `created_before` whose queue message was never confirmed
        sent (`enqueued_at` unset), oldest first."""

    def claim_requeue(self, job_id: str, now: float, lease_s: float) -> bool:
        """Claim an unsent queued job for sending it again: set `requeue_claimed_at = now` only if
        it is still queued and unsent and no other claim is younger than `lease_s`. Of several
        callers racing, exactly one gets True."""

    def heartbeat(self, job_id: str, worker_id: str, now: float) -> bool:
        """Renew the holder's lease: set `heartbeat_at = now` only while the job is running and
        held by `worker_id`. False: it is not (ended, canceled, taken over) and the run must stop."""

    def take_over(self, job_id: str, worker_id: str | None, heartbeat_at: float | None) -> bool:
        """Put a running job whose holder's lease lapsed back to queued (clearing `worker_id`,
        `heartbeat_at`, `lease_s`), only if it is still running, held by `worker_id`, with the
        `heartbeat_at` the caller saw (None: never set). A holder that beat meanwhile keeps the
        job; of several callers racing, exactly one gets True."""


@dataclass
class QueueItem:
    job_id: str
    priority: int
    receipt: str  # opaque handle for ack/nack/extend (SQS receipt handle, local token)
    receive_count: int = 1


@runtime_checkable
class JobQueue(Protocol):
    """Job ids waiting to run. Higher priority first, FIFO within a priority."""

    def put(self, job_id: str, priority: int) -> None: ...

    def get(self, timeout: float) -> QueueItem | None:
        """Next item, waiting up to `timeout` seconds; it stays invisible until ack/nack."""

    def ack(self, item: QueueItem) -> None:
        """Done with it: remove for good."""

    def nack(self, item: QueueItem, delay: float = 0.0) -> None:
        """Give it back to the queue, visible again after `delay` seconds."""

    def extend(self, item: QueueItem, seconds: float) -> None:
        """Keep it invisible `seconds` longer (a long job is still running)."""

    def remove(self, job_id: str) -> bool:
        """Drop a waiting job (cancel before start). True if it was waiting."""

    def depth(self) -> int: ...


@dataclass
class StoredOutput:
    key: str  # storage key, e.g. "{prefix}/{job_id}/{filename}" or a local relative path
    url: str | None = None  # a URL a client can GET (presigned / CloudFront / local /view)
    size: int = 0
    content_type: str = "image/png"


@runtime_checkable
class OutputStore(Protocol):
    def put(
        self, job_id: str, filename: str, data: bytes, content_type: str = "image/png",
        metadata: dict[str, str] | None = None,
    ) -> StoredOutput: ...

    def get(self, key: str) -> bytes: ...

    def url(self, key: str) -> str | None: ...


@runtime_checkable
class Metrics(Protocol):
    """Buffered metrics; `flush` sends (CloudWatch) or is a no-op (Prometheus text)."""

    def observe(self, name: str, value: float, unit: str = "None", **dimensions: str) -> None: ...

    def increment(self, name: str, value: float = 1.0, **dimensions: str) -> None: ...

    def gauge(self, name: str, value: float, unit: str = "Count", **dimensions: str) -> None: ...

    def flush(self) -> None: ...

    def render(self) -> str:
        """Prometheus text exposition of what this process recorded ('' if not applicable)."""


@runtime_checkable
class Notifier(Protocol):
    def publish(self, event: str, payload: dict[str, Any], attributes: dict[str, str] | None = None) -> None: ...
