"""The job layer: run one job end to end, and schedule many.

`run_job` executes ONE job record: claim (queued -> running), execute, store outputs, write the
terminal state, notify, record metrics, and only then announce the end to listeners. Any worker
(the in-process `JobManager` below, the SQS worker, a Lambda) calls the same function, so the
semantics (timeouts, retries, typed terminal reasons) are the same everywhere.

`JobManager` is the in-process scheduler the server uses: a pool of at most
`settings.max_concurrent_jobs` worker threads pulling from a `JobQueue` (higher priority first,
FIFO within a priority), per-job cancel/interrupt, crash recovery on start, and an event fan-out
to websockets and sync waiters.

Every state change is written to the `JobStore` before it is announced, so a process killed at
any point can be recovered from the store (and queue) alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from comfyd.engine.errors import RetryableError, is_retryable
from comfyd.engine.interfaces import (
    JobQueue,
    JobRecord,
    JobStatus,
    JobStore,
    Metrics,
    Notifier,
    OutputStore,
    QueueItem,
)
from comfyd.engine.job_views import prediction_view
from comfyd.engine.previews import latent_preview_jpeg
from comfyd.engine.sweeper import Sweeper, mark_enqueued
from comfyd.safepath import safe_join

if TYPE_CHECKING:
    from comfyd.engine.context import NodeEnvironment
    from comfyd.engine.schema import NodeRegistry
    from comfyd.settings import Settings

log = logging.getLogger("comfyd.jobs")

# A listener receives ComfyUI websocket events: (event type, data). Data always has prompt_id.
EventListener = Callable[[str, dict[str, Any]], None]

# Executor events that end a job. run_job holds them back until the job's terminal state is
# stored (and drops them for an attempt that will be retried), then announces them itself.
TERMINAL_EVENTS = frozenset({"execution_success", "execution_error", "execution_interrupted"})
# Events ComfyUI keeps in a history entry's status.messages.
HISTORY_EVENTS = frozenset({"execution_start", "execution_cached"}) | TERMINAL_EVENTS

PROGRESS_WRITE_INTERVAL_S = 1.0  # how often a running job's progress is written to the store


# --------------------------------------------------------------------------------------------
# What run_job needs from the outside
# --------------------------------------------------------------------------------------------


class WorkflowExecutor(Protocol):
    """comfyd.engine.executor.Executor, or a test double with the same `execute`."""

    def execute(
        self,
        req: Any,
        job_id: str,
        listener: EventListener | None = None,
        interrupt: threading.Event | None = None,
        extra_data: dict[str, Any] | None = None,
    ) -> Any: ...


@dataclass
class JobRuntime:
    """What executes workflows in this process: the node registry, the node environment
    (settings + model manager) and the executor. Built once per process by the executor
    factory (`comfyd.runtime.build_runtime`), which imports the nodes (and torch) lazily."""

    registry: NodeRegistry
    env: NodeEnvironment
    executor: WorkflowExecutor
    # Validation function; defaults to comfyd.engine.validate.validate_workflow.
    validator: Callable[[Any, NodeRegistry, NodeEnvironment], list[str]] | None = None
    # Frees cached models / node outputs (POST /free); optional.
    release: Callable[[bool, bool], None] | None = None

    def parse(self, body: Any) -> Any:
        """A WorkflowRequest from a request body (either accepted form)."""
        from comfyd.engine.graph import parse_workflow

        return parse_workflow(body)

    def validate(self, req: Any) -> list[str]:
        """Output node ids to execute; raises WorkflowValidationError with ComfyUI's 400 body."""
        if self.validator is not None:
            return self.validator(req, self.registry, self.env)
        from comfyd.engine.validate import validate_workflow

        return validate_workflow(req, self.registry, self.env)

    def request_for(self, job: JobRecord) -> Any:
        """The WorkflowRequest to execute for a stored job."""
        body: dict[str, Any] = {"prompt": job.workflow, "extra_data": job.extra_data, "client_id": job.client_id}
        targets = job.extra_data.get("partial_execution_targets")
        if isinstance(targets, list):
            body["partial_execution_targets"] = targets
        req = self.parse(body)
        return replace(
            req, node_id=job.node_id or req.node_id, execution_mode=job.execution_mode, priority=job.priority,
        )

    def output_nodes(self, job: JobRecord) -> list[str]:
        """ComfyUI's outputs_to_execute for views: the requested targets, or every output node."""
        targets = job.extra_data.get("partial_execution_targets")
        if isinstance(targets, list):
            return [str(t) for t in targets]
        found = []
        for node_id, node in job.workflow.items():
            cls = self.registry.get(node.get("class_type", "")) if isinstance(node, dict) else None
            if cls is not None and cls.schema.output_node:
                found.append(node_id)
        return found

    def free(self, unload_models: bool, free_memory: bool) -> None:
        if self.release is not None:
            self.release(unload_models, free_memory)


class JobBackends(Protocol):
    """The backends run_job writes to. `comfyd.backends.Services` has these attributes."""

    job_store: JobStore
    output_store: OutputStore
    metrics: Metrics
    notifier: Notifier


class JobControl:
    """A running job's stop switch and why it was pulled.

    Reasons: "canceled" (one job, by a client), "interrupted" (POST /interrupt), "timed_out"
    (wall-time budget), "shutdown" (the server is stopping: the job is queued again), "lost"
    (the record is no longer this worker's: ended elsewhere or taken over; nothing is written).
    `held` is set while run_job holds the claimed job, so a heartbeat renews its lease only then.
    """

    def __init__(self) -> None:
        self.interrupt = threading.Event()
        self.reason: str | None = None
        self.held = threading.Event()
        self._lock = threading.Lock()

    def stop(self, reason: str) -> bool:
        """Pull the switch; the first reason wins. False if it was already pulled."""
        with self._lock:
            if self.reason is not None:
                return False
            self.reason = reason
        self.interrupt.set()
        return True


@dataclass
class JobOutcome:
    """What became of one run_job call.

    - `status` is the terminal status written, or None when nothing terminal was written.
    - `retry_delay_s` is set when the job went back to QUEUED (retryable error, or shutdown):
      the caller gives the queue item back with this delay (`queue.nack(item, delay)`).
    - `skipped` is True when the job could not be claimed (already running elsewhere,
      finished, canceled) or its result was dropped (a hard timeout already ended it): ack it.
    """

    job_id: str
    status: JobStatus | None = None
    retry_delay_s: float | None = None
    skipped: bool = False
    record: JobRecord | None = None


@dataclass
class _TimeoutTimer:
    """Soft then hard wall-time budget for one job."""

    soft: threading.Timer
    hard: threading.Timer

    def cancel(self) -> None:
        self.soft.cancel()
        self.hard.cancel()


def hard_timeout_grace_s(timeout_s: float) -> float:
    """How long a job may ignore its interrupt after the budget before it is failed anyway."""
    return min(30.0, max(1.0, 0.1 * timeout_s))


# --------------------------------------------------------------------------------------------
# run_job
# --------------------------------------------------------------------------------------------


def run_job(
    job: JobRecord,
    *,
    runtime: JobRuntime,
    backends: JobBackends,
    settings: Settings,
    listener: EventListener | None = None,
    control: JobControl | None = None,
    worker_id: str | None = None,
    lease_s: float | None = None,
) -> JobOutcome:
    """Execute one job record end to end; never raises for a job's own failure.

    1. claim: queued -> running (conditional; a job someone else holds is skipped), recording
       `worker_id` as the holder and the claim as its first heartbeat (lease `lease_s`);
    2. execute under the wall-time budget (`settings.job_timeout_s`), forwarding events;
    3. store image outputs through the OutputStore;
    4. write the terminal state (succeeded / failed / canceled / timed_out), or queue it again
       for a retryable error (`settings.retry_attempts`, backoff `settings.retry_backoff_s * 2^n`);
    5. notifier, metrics; then the held terminal event and ComfyUI's final
       `executing {node: null}` go to `listener`.

    With a `worker_id`, every write after the claim is conditional on still holding the job: a
    run whose record was taken over or ended elsewhere (`control.reason == "lost"`, or found
    before uploading) stores, writes and announces nothing.
    """
    store = backends.job_store
    control = control or JobControl()
    current = store.get(job.id)  # the caller's copy may be stale (attempts, status)
    if current is None or current.status is not JobStatus.QUEUED:
        return JobOutcome(job.id, skipped=True, record=current)
    if current.cancel_requested:  # asked while it waited (or between retries): never start it
        final = cancel_unstarted(backends, job.id, current.cancel_requested)
        if final is None:
            return JobOutcome(job.id, skipped=True, record=store.get(job.id))
        return JobOutcome(job.id, status=JobStatus.CANCELED, record=final)
    job = current
    started = time.time()
    claimed = store.transition(
        job.id, {JobStatus.QUEUED}, JobStatus.RUNNING,
        started_at=started, attempts=job.attempts + 1, worker_id=worker_id, progress={}, finished_at=None,
        heartbeat_at=started, lease_s=lease_s,
    )
    if not claimed:
        return JobOutcome(job.id, skipped=True, record=store.get(job.id))
    control.held.set()
    try:
        return _run_claimed(job, started, runtime, backends, settings, listener, control, worker_id)
    finally:
        control.held.clear()


def _run_claimed(
    job: JobRecord, started: float, runtime: JobRuntime, backends: JobBackends, settings: Settings,
    listener: EventListener | None, control: JobControl, worker_id: str | None,
) -> JobOutcome:
    store = backends.job_store
    job = store.get(job.id) or replace(job, status=JobStatus.RUNNING, started_at=started, attempts=job.attempts + 1,
                                       worker_id=worker_id)
    if job.attempts == 1:
        backends.metrics.observe("QueueWait", max(0.0, started - job.created_at), "Seconds")
    _publish(backends, "job.started", job)

    recorder = _EventRecorder(job, listener, backends)
    timer = _start_timeout(job, control, settings, backends, recorder, worker_id)
    try:
        result, exception = _execute(job, runtime, recorder, control)
    finally:
        timer.cancel()
    return _finish(job, result, exception, backends, settings, recorder, control, worker_id)


@dataclass
class _Result:
    """The executor's result, normalised (also built when execute itself raised)."""

    status: str  # success | error | interrupted
    outputs: dict[str, Any] = field(default_factory=dict)
    node_timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None


def _execute(
    job: JobRecord, runtime: JobRuntime, recorder: _EventRecorder, control: JobControl
) -> tuple[_Result, BaseException | None]:
    try:
        req = runtime.request_for(job)
        raw = runtime.executor.execute(
            req, job_id=job.id, listener=recorder, interrupt=control.interrupt, extra_data=dict(job.extra_data)
        )
    except Exception as exc:  # the executor reports node failures in its result; this is anything else
        log.exception("job %s: executor raised", job.id)
        return _Result("error", error=_error_from_exception(job, exc)), exc
    result = _Result(
        status=str(getattr(raw, "status", "error")),
        outputs=dict(getattr(raw, "outputs", None) or {}),
        node_timings={k: float(v) for k, v in (getattr(raw, "node_timings", None) or {}).items()},
        error=getattr(raw, "error", None),
    )
    return result, getattr(raw, "exception", None)


def _error_from_exception(job: JobRecord, exc: BaseException) -> dict[str, Any]:
    return {
        "prompt_id": job.id,
        "node_id": getattr(exc, "node_id", None),
        "node_type": getattr(exc, "class_type", None),
        "executed": [],
        "exception_message": str(exc),
        "exception_type": type(exc).__name__,
        "traceback": traceback.format_exception(type(exc), exc, exc.__traceback__),
        "current_inputs": {},
        "current_outputs": {},
    }


def _error_is_retryable(error: dict[str, Any] | None, exception: BaseException | None) -> bool:
    if exception is not None:
        return is_retryable(exception)
    if not error:
        return False
    if isinstance(error.get("retryable"), bool):  # the Executor classifies its own errors
        return error["retryable"]
    # Same rule as engine.errors.is_retryable, read from execution_error-shaped data.
    name = str(error.get("exception_type") or error.get("type") or "").rsplit(".", 1)[-1]
    if name in {"RetryableError", "OutOfMemoryError", "AcceleratorError"}:
        return True
    text = str(error.get("exception_message") or error.get("message") or "").lower()
    return any(s in text for s in ("out of memory", "cuda error", "device-side assert", "slowdown", "throttl"))


def _finish(
    job: JobRecord,
    result: _Result,
    exception: BaseException | None,
    backends: JobBackends,
    settings: Settings,
    recorder: _EventRecorder,
    control: JobControl,
    holder: str | None,
) -> JobOutcome:
    store = backends.job_store
    if control.reason == "lost" or (result.status == "success" and not _still_held(store, job.id, holder)):
        # Another worker runs (or ended) this job now: its run stores and reports the result.
        control.stop("lost")
        log.warning("job %s: no longer held by worker %s; dropping this run's result", job.id, holder)
        return JobOutcome(job.id, skipped=True, record=store.get(job.id))
    output_urls: list[str] = []
    if result.status == "success":
        try:
            output_urls = _store_outputs(job, result.outputs, backends.output_store, settings)
        except Exception as exc:
            log.warning("job %s: storing outputs failed: %s", job.id, exc)
            result = _Result("error", result.outputs, result.node_timings, _error_from_exception(job, exc))
            exception = exc
            if not is_retryable(exc) and isinstance(exc, OSError | ConnectionError | TimeoutError):
                exception = _RetryableStorageError(str(exc))  # I/O trouble (throttling, network): retry

    if control.reason == "shutdown" and result.status != "success":
        # Not the job's fault: this attempt does not count against its retries.
        return _requeue(job, backends, recorder, holder, delay=0.0, error=None, attempts=job.attempts - 1)

    if result.status == "success":
        status = JobStatus.SUCCEEDED
    elif control.reason == "timed_out":
        status = JobStatus.TIMED_OUT
    elif result.status == "interrupted" or control.reason in ("canceled", "interrupted"):
        status = JobStatus.CANCELED
    else:
        status = JobStatus.FAILED
        if _error_is_retryable(result.error, exception) and job.attempts <= settings.retry_attempts:
            delay = settings.retry_backoff_s * (2 ** (job.attempts - 1))
            log.info("job %s: retryable error, attempt %d, retrying in %.1fs", job.id, job.attempts, delay)
            backends.metrics.increment("JobRetries")
            return _requeue(job, backends, recorder, holder, delay=delay,
                            error=_job_error(result.error, "retryable"))

    error = None
    if status is JobStatus.FAILED:
        error = _job_error(result.error, "execution_error")
    elif status is JobStatus.TIMED_OUT:
        error = {"type": "timed_out", "message": f"job exceeded its wall-time budget of {settings.job_timeout_s:g} s"}
    elif status is JobStatus.CANCELED:
        error = {"type": control.reason or "interrupted", "message": "job was interrupted"}

    finished = time.time()
    written = store.transition(
        job.id, {JobStatus.RUNNING}, status, holder=holder,
        finished_at=finished, outputs=result.outputs, output_urls=output_urls,
        node_timings=result.node_timings, error=error, messages=recorder.messages_for(status, error),
        progress=recorder.progress,
    )
    if not written:  # a hard timeout, an operator or a worker that took it over: drop this result
        return JobOutcome(job.id, skipped=True, record=store.get(job.id))
    final = store.get(job.id) or replace(job, status=status, finished_at=finished, outputs=result.outputs)
    _record_metrics(backends.metrics, final, result.node_timings)
    _publish(backends, "job.completed", final)
    recorder.announce_end(final, result.error)
    return JobOutcome(job.id, status=status, record=final)


class _RetryableStorageError(RetryableError):
    """Wraps an output-store failure so that it is retried like a throttled write."""

    def __init__(self, message: str) -> None:
        super().__init__(f"storage throttled or unavailable: {message}")


def _still_held(store: JobStore, job_id: str, holder: str | None) -> bool:
    """A last look before uploading outputs: renew the lease, which fails once the job is not
    this worker's any more (a worker that took it over uploads its own)."""
    if holder is None:
        return True
    try:
        return store.heartbeat(job_id, holder, time.time())
    except Exception as exc:  # unknown: go on; the conditional end write still decides
        log.warning("job %s: lease check before upload failed: %s", job_id, exc)
        return True


def _requeue(
    job: JobRecord, backends: JobBackends, recorder: _EventRecorder, holder: str | None, delay: float,
    error: dict[str, Any] | None, attempts: int | None = None,
) -> JobOutcome:
    fields: dict[str, Any] = {"worker_id": None, "heartbeat_at": None, "lease_s": None, "error": error,
                              "progress": recorder.progress}
    if attempts is not None:
        fields["attempts"] = attempts
    if not backends.job_store.transition(job.id, {JobStatus.RUNNING}, JobStatus.QUEUED, holder=holder, **fields):
        return JobOutcome(job.id, skipped=True, record=backends.job_store.get(job.id))  # not ours any more
    return JobOutcome(job.id, retry_delay_s=delay, record=backends.job_store.get(job.id))


def cancel_unstarted(backends: JobBackends, job_id: str, reason: str) -> JobRecord | None:
    """End a job that has not started as canceled and tell the notifier; None if it is not
    queued any more (a worker claimed it, or it ended)."""
    store = backends.job_store
    if not store.transition(job_id, {JobStatus.QUEUED}, JobStatus.CANCELED, finished_at=time.time(),
                            error={"type": reason, "message": "job was canceled before it started"}):
        return None
    final = store.get(job_id)
    if final is not None:
        _publish(backends, "job.completed", final)
    return final


def _job_error(error: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    error = error or {}
    tb = error.get("traceback") or []
    return {
        "type": kind,
        "exception_type": error.get("exception_type") or error.get("type"),
        "message": error.get("exception_message") or error.get("message") or "execution failed",
        "node_id": error.get("node_id"),
        "node_type": error.get("node_type"),
        "traceback": tb if isinstance(tb, list) else [str(tb)],
    }


def _store_outputs(
    job: JobRecord, outputs: dict[str, Any], output_store: OutputStore, settings: Settings
) -> list[str]:
    """Put every `type: output` image the job saved through the OutputStore; their URLs."""
    urls: list[str] = []
    metadata = _output_metadata(job)
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for image in ui.get("images") or []:
            if not isinstance(image, dict) or image.get("type", "output") != "output":
                continue
            subfolder = str(image.get("subfolder") or "")
            filename = str(image.get("filename") or "")
            if not filename:
                continue
            path = safe_join(settings.output_dir, *(p for p in (subfolder, filename) if p))
            relative = f"{subfolder}/{filename}" if subfolder else filename
            stored = output_store.put(job.id, relative, path.read_bytes(), _content_type(filename), metadata)
            if stored.url:
                urls.append(stored.url)
    return urls


def _output_metadata(job: JobRecord) -> dict[str, str]:
    """What travels with each stored output: the job, its workflow's hash, the followed node's seed."""
    canonical = json.dumps(job.workflow, sort_keys=True, separators=(",", ":"), default=str)
    metadata = {"job_id": job.id, "workflow_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
                "source": job.source}
    followed = job.workflow.get(job.node_id)
    inputs = followed.get("inputs") if isinstance(followed, dict) else None
    if isinstance(inputs, dict):
        for name in ("seed", "noise_seed"):
            if isinstance(inputs.get(name), int):
                metadata["seed"] = str(inputs[name])
                break
    return metadata


def _content_type(filename: str) -> str:
    ext = filename.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp",
            "gif": "image/gif", "json": "application/json"}.get(ext, "application/octet-stream")


def _record_metrics(metrics: Metrics, job: JobRecord, timings: dict[str, float]) -> None:
    status = job.status.value
    metrics.increment("JobsCompleted", status=status)
    if job.started_at is not None and job.finished_at is not None:
        metrics.observe("JobDuration", job.finished_at - job.started_at, "Seconds", status=status)
    for node_id, seconds in timings.items():
        node = job.workflow.get(node_id)
        class_type = node.get("class_type", "unknown") if isinstance(node, dict) else "unknown"
        metrics.observe("NodeExecutionTime", seconds, "Seconds", class_type=str(class_type))


def _publish(backends: JobBackends, event: str, job: JobRecord) -> None:
    """Tell the notifier; a notifier failure never fails the job."""
    attributes = {"job_id": job.id, "status": job.status.value, "source": job.source}
    webhook = job.extra_data.get("webhook")
    if isinstance(webhook, str) and webhook:
        attributes["webhook"] = webhook
        events = job.extra_data.get("webhook_events_filter")
        if isinstance(events, list):
            attributes["webhook_events_filter"] = ",".join(str(e) for e in events)
    try:
        backends.notifier.publish(event, prediction_view(job), attributes)
    except Exception:
        log.exception("job %s: notifier failed on %s", job.id, event)


# --------------------------------------------------------------------------------------------
# Events of one running job
# --------------------------------------------------------------------------------------------


class _EventRecorder:
    """The listener handed to the executor for one job.

    Forwards events to the caller's listener, keeps ComfyUI's history messages, writes progress
    to the store now and then, publishes output/log notifications, and holds back the terminal
    event until run_job has stored the job's end.
    """

    def __init__(self, job: JobRecord, listener: EventListener | None, backends: JobBackends) -> None:
        self.job = job
        self.listener = listener
        self.backends = backends
        self.messages: list[list[Any]] = []
        self.progress: dict[str, Any] = {}
        self.partial_outputs: dict[str, Any] = {}
        # Step previews when the client asks (extra_data.preview_method, as ComfyUI's --preview-method).
        self.preview_wanted = str(job.extra_data.get("preview_method", "none")).lower() in ("auto", "latent2rgb")
        self.held: tuple[str, dict[str, Any]] | None = None
        self.ended = threading.Event()  # set once the end was announced (normal or hard timeout)
        self._last_progress_write = 0.0
        self._lock = threading.Lock()

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self.ended.is_set():
            return  # a hard timeout already announced this job's end
        data = dict(data)
        data.setdefault("prompt_id", self.job.id)
        if event in HISTORY_EVENTS:
            with self._lock:
                self.messages.append([event, {"timestamp": int(time.time() * 1000), **data}])
        if event in TERMINAL_EVENTS:
            self.held = (event, data)
            return
        if event == "executing" and data.get("node") is None:
            return  # run_job sends the final executing{node: null} after the history is stored
        if event == "progress":
            preview = data.pop("preview", None)  # a latent: never sent as JSON
            self._on_progress(data)
            if preview is not None and self.preview_wanted:
                self._forward_preview(preview, data.get("node"))
        elif event == "executed":
            with self._lock:
                self.partial_outputs[str(data.get("node"))] = data.get("output") or {}
            self._publish_running("job.output")
        elif event == "executing":
            self._publish_running("job.logs")
        self._forward(event, data)

    def _on_progress(self, data: dict[str, Any]) -> None:
        self.progress = {k: data.get(k) for k in ("value", "max", "node")}
        now = time.monotonic()
        if now - self._last_progress_write >= PROGRESS_WRITE_INTERVAL_S:
            self._last_progress_write = now
            try:
                self.backends.job_store.update(self.job.id, progress=self.progress)
            except Exception:
                log.exception("job %s: progress write failed", self.job.id)

    def _forward_preview(self, latent: Any, node: Any) -> None:
        """A PREVIEW_IMAGE frame for this step (the client asked for previews)."""
        try:
            image = latent_preview_jpeg(latent)
        except (ValueError, TypeError) as exc:
            log.debug("job %s: no preview: %s", self.job.id, exc)
            return
        self._forward("binary_image", {"image": image, "format": "JPEG", "node": node, "prompt_id": self.job.id})

    def _publish_running(self, event: str) -> None:
        """Cog's `output` / `logs` webhook events while the job runs (the notifier throttles them).
        Only jobs with a webhook get them: other notifiers (SNS) see start and completion only."""
        if not self.job.extra_data.get("webhook"):
            return
        with self._lock:
            partial = replace(self.job, status=JobStatus.RUNNING, outputs=dict(self.partial_outputs),
                              messages=list(self.messages), progress=dict(self.progress))
        _publish(self.backends, event, partial)

    def _forward(self, event: str, data: dict[str, Any]) -> None:
        if self.listener is None:
            return
        try:
            self.listener(event, data)
        except Exception:
            log.exception("job %s: listener failed on %s", self.job.id, event)

    def messages_for(self, status: JobStatus, error: dict[str, Any] | None) -> list[list[Any]]:
        """History messages, ending with the terminal event the client will see."""
        with self._lock:
            messages = [m for m in self.messages if m[0] not in TERMINAL_EVENTS]
        event, data = self._terminal_event(status, error)
        messages.append([event, {**data, "timestamp": int(time.time() * 1000)}])
        return messages

    def _terminal_event(self, status: JobStatus, error: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        held = self.held
        job_id = self.job.id
        if status is JobStatus.SUCCEEDED:
            return held if held and held[0] == "execution_success" else ("execution_success", {"prompt_id": job_id})
        if status is JobStatus.FAILED:
            if held and held[0] == "execution_error":
                return held
            error = error or {}
            return "execution_error", {
                "prompt_id": job_id, "node_id": error.get("node_id"), "node_type": error.get("node_type"),
                "executed": [], "exception_message": error.get("message", ""),
                "exception_type": error.get("exception_type") or "Exception",
                "traceback": error.get("traceback") or [], "current_inputs": {}, "current_outputs": {},
            }
        base = held[1] if held and held[0] == "execution_interrupted" else {
            "prompt_id": job_id, "node_id": self.progress.get("node"), "node_type": None, "executed": [],
        }
        return "execution_interrupted", {**base, "reason": status.value}

    def announce_end(self, job: JobRecord, error: dict[str, Any] | None) -> None:
        """Send the terminal event then `executing {node: null}`: the job's history is stored."""
        if self.ended.is_set():
            return
        self.ended.set()
        event, data = self._terminal_event(job.status, job.error)
        self._forward(event, data)
        self._forward("executing", {"node": None, "display_node": None, "prompt_id": job.id})


def _start_timeout(
    job: JobRecord, control: JobControl, settings: Settings, backends: JobBackends, recorder: _EventRecorder,
    holder: str | None,
) -> _TimeoutTimer:
    """Soft budget: interrupt the job. Hard budget: end it in the store even if it hangs."""
    budget = settings.job_timeout_s

    def soft() -> None:
        if control.stop("timed_out"):
            log.warning("job %s: wall-time budget of %gs exceeded; interrupting", job.id, budget)

    def hard() -> None:
        control.stop("timed_out")
        error = {"type": "timed_out", "message": f"job exceeded its wall-time budget of {budget:g} s "
                 "and did not stop when interrupted"}
        written = backends.job_store.transition(
            job.id, {JobStatus.RUNNING}, JobStatus.TIMED_OUT, holder=holder, finished_at=time.time(), error=error,
            messages=recorder.messages_for(JobStatus.TIMED_OUT, error), progress=recorder.progress,
        )
        if written:
            log.error("job %s: did not stop within the grace period; marked timed_out", job.id)
            final = backends.job_store.get(job.id)
            if final is not None:
                _record_metrics(backends.metrics, final, {})
                _publish(backends, "job.completed", final)
                recorder.announce_end(final, error)

    soft_timer = threading.Timer(budget, soft)
    hard_timer = threading.Timer(budget + hard_timeout_grace_s(budget), hard)
    for t in (soft_timer, hard_timer):
        t.daemon = True
        t.name = f"comfyd-timeout-{job.id[:8]}"
        t.start()
    return _TimeoutTimer(soft_timer, hard_timer)


# --------------------------------------------------------------------------------------------
# The in-process scheduler
# --------------------------------------------------------------------------------------------


class QueueFullError(Exception):
    """The queue holds `queue_max_depth` waiting jobs; try again later."""

    def __init__(self, depth: int, retry_after_s: int) -> None:
        super().__init__(f"queue is full ({depth} jobs waiting); retry in {retry_after_s} s")
        self.depth = depth
        self.retry_after_s = retry_after_s


@dataclass
class SubmitResult:
    job: JobRecord
    created: bool  # False: a job with this id existed already (idempotent resubmission)


# (job, event, data) for every event of every job; called from worker threads.
JobEventListener = Callable[[JobRecord, str, dict[str, Any]], None]


class JobManager:
    """Runs the jobs of one process: submit, schedule, cancel, recover, fan events out."""

    def __init__(
        self,
        settings: Settings,
        backends: Any,
        runtime_factory: Callable[[], JobRuntime],
        queue: JobQueue,
        *,
        workers: bool = True,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.queue = queue
        self.store: JobStore = backends.job_store
        self._runtime_factory = runtime_factory
        self._runtime: JobRuntime | None = None
        self._runtime_error: BaseException | None = None
        self._runtime_lock = threading.Lock()
        self.runtime_started_at: float | None = None
        self.runtime_completed_at: float | None = None
        self._run_workers = workers
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._controls: dict[str, JobControl] = {}
        self._running: dict[str, JobRecord] = {}
        self._listeners: list[JobEventListener] = []
        self._done_callbacks: dict[str, list[Callable[[JobRecord], None]]] = {}
        self._number = 0
        self.worker_id = f"local-{uuid.uuid4().hex[:8]}"
        # SQS: other processes (workers, other API servers) share the queue and the store.
        self._shares_queue = settings.queue != "local"
        self._sweeper: Sweeper | None = None

    # ---- runtime (built lazily: importing the nodes imports torch) --------------------------

    @property
    def runtime(self) -> JobRuntime:
        with self._runtime_lock:
            if self._runtime is None:
                if self._runtime_error is not None:
                    raise RuntimeError(f"setup failed: {self._runtime_error}") from self._runtime_error
                self.runtime_started_at = self.runtime_started_at or time.time()
                try:
                    self._runtime = self._runtime_factory()
                except Exception as exc:
                    self._runtime_error = exc
                    self.runtime_completed_at = time.time()
                    log.exception("building the executor failed")
                    raise RuntimeError(f"setup failed: {exc}") from exc
                self.runtime_completed_at = time.time()
            return self._runtime

    @property
    def built_runtime(self) -> JobRuntime | None:
        """The runtime if it is built already; never builds it."""
        return self._runtime

    @property
    def setup_state(self) -> str:
        """starting | succeeded | failed (Cog's setup status)."""
        if self._runtime is not None:
            return "succeeded"
        if self._runtime_error is not None:
            return "failed"
        return "starting"

    @property
    def setup_error(self) -> str | None:
        return None if self._runtime_error is None else str(self._runtime_error)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Recover jobs a previous process left behind, then start the worker threads."""
        newest = self.store.list(limit=1)
        self._number = newest[0].number if newest else 0
        if self._sweeps():
            self._sweeper = Sweeper(self.store, self.queue, self.settings.requeue_after_s).start()
        if self._run_workers:
            self.recover()
            for index in range(self.settings.max_concurrent_jobs):
                thread = threading.Thread(target=self._worker_loop, name=f"comfyd-worker-{index}", daemon=True)
                thread.start()
                self._threads.append(thread)

    def _sweeps(self) -> bool:
        """Sweep for unsent jobs here? With a shared queue, unless in Lambda, where a thread runs
        only during invocations (the workers sweep too)."""
        return (self._shares_queue and self.settings.requeue_after_s > 0
                and "AWS_LAMBDA_FUNCTION_NAME" not in os.environ)

    def warm_up(self) -> None:
        """Build the runtime now (in a background thread at server start)."""
        with contextlib.suppress(RuntimeError):
            _ = self.runtime

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking jobs; interrupt running ones, which go back to the queue for the next start."""
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        with self._lock:
            controls = list(self._controls.values())
        for control in controls:
            control.stop("shutdown")
        wake = getattr(self.queue, "wake", None)  # optional: lets idle workers see the stop at once
        if callable(wake):
            wake()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    @property
    def workers_alive(self) -> bool:
        return not self._run_workers or (bool(self._threads) and all(t.is_alive() for t in self._threads))

    def recover(self) -> list[str]:
        """Requeue jobs left running or queued by a process that died (this process owns the
        local queue). A finished job is never re-run: its queue item is acked when received."""
        recovered = []
        for job in self.store.list(status={JobStatus.RUNNING}, limit=100_000):
            if job.attempts > self.settings.retry_attempts:
                # The process died during every attempt: this job is what kills it. Stop here.
                error = {"type": "crashed", "message": f"the server stopped while running this job "
                         f"{job.attempts} times; not retried again"}
                if self.store.transition(job.id, {JobStatus.RUNNING}, JobStatus.FAILED,
                                         finished_at=time.time(), error=error):
                    log.error("job %s failed: the server died during all %d attempts", job.id, job.attempts)
                continue
            if self.store.transition(job.id, {JobStatus.RUNNING}, JobStatus.QUEUED, worker_id=None):
                log.warning("recovering job %s (was running when the server stopped)", job.id)
                self.queue.put(job.id, job.priority)
                recovered.append(job.id)
        for job in self.store.list(status={JobStatus.QUEUED}, limit=100_000):
            self.queue.put(job.id, job.priority)  # idempotent: no duplicate if it is there
        return recovered

    # ---- submit / cancel -------------------------------------------------------------------------

    def next_number(self) -> int:
        with self._lock:
            self._number += 1
            return self._number

    def submit(self, job: JobRecord) -> SubmitResult:
        """Store and enqueue a job; the same id twice gives the existing job back."""
        existing = self.store.get(job.id)
        if existing is not None:
            return SubmitResult(existing, created=False)
        depth = self.queue.depth()
        if depth >= self.settings.queue_max_depth:
            raise QueueFullError(depth, self.retry_after_s())
        if not job.number:
            job.number = self.next_number()
        job.status = JobStatus.QUEUED
        if not self.store.create(job):
            existing = self.store.get(job.id)
            if existing is not None:
                return SubmitResult(existing, created=False)
        self.queue.put(job.id, job.priority)
        mark_enqueued(self.store, job.id)  # from now on no sweeper sends it again
        self.backends.metrics.increment("JobsSubmitted", source=job.source)
        self._broadcast_status()
        return SubmitResult(job, created=True)

    def retry_after_s(self) -> int:
        """A rough wait for a queue slot: the average job duration times queued per worker."""
        return max(1, min(60, int(self.queue.depth() / max(1, self.settings.max_concurrent_jobs)) + 1))

    def cancel(self, job_id: str, reason: str = "canceled") -> JobRecord | None:
        """Cancel one job: drop it if waiting, stop it if running (here or on a remote worker,
        through a cancel request in the store). None if unknown."""
        job = self.store.get(job_id)
        if job is None:
            return None
        if job.status is JobStatus.QUEUED:
            self.queue.remove(job_id)
            final = cancel_unstarted(self.backends, job_id, reason)
            if final is not None:
                self._on_job_done(final)
                self._broadcast_status()
                return final
            job = self.store.get(job_id) or job  # a worker claimed it meanwhile
        if not job.status.terminal:
            self._stop(job_id, reason)
        return self.store.get(job_id) or job

    def interrupt(self, job_id: str | None = None) -> list[str]:
        """POST /interrupt: the given running job, or every running job (of this process, and
        with a shared queue those running on other workers too)."""
        with self._lock:
            held = list(self._controls) if job_id is None else [j for j in (job_id,) if j in self._controls]
        targets = held + self._running_elsewhere(job_id, set(held))
        return [jid for jid in targets if self._stop(jid, "interrupted")]

    def _running_elsewhere(self, job_id: str | None, held: set[str]) -> list[str]:
        """Running jobs this process does not hold: only with a shared queue (SQS workers)."""
        if not self._shares_queue:
            return []
        if job_id is not None:
            job = self.store.get(job_id)
            return [job_id] if job is not None and job.status is JobStatus.RUNNING and job_id not in held else []
        return [j.id for j in self.store.list({JobStatus.RUNNING}, limit=1000) if j.id not in held]

    def _stop(self, job_id: str, reason: str) -> bool:
        """Pull the stop switch of a job this process runs; otherwise record a cancel request
        in the store, which the worker running it polls (and the next one to receive it sees)."""
        with self._lock:
            control = self._controls.get(job_id)
        if control is not None:
            return control.stop(reason)
        return self.store.request_cancel(job_id, reason)

    def running_jobs(self) -> list[JobRecord]:
        with self._lock:
            return list(self._running.values())

    def queue_remaining(self) -> int:
        return self.queue.depth() + len(self._running)

    # ---- events ------------------------------------------------------------------------------

    def add_listener(self, listener: JobEventListener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def remove() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return remove

    def add_done_callback(self, job_id: str, callback: Callable[[JobRecord], None]) -> Callable[[], None]:
        """Call `callback(job)` (from a worker thread) when this process ends the job."""
        with self._lock:
            self._done_callbacks.setdefault(job_id, []).append(callback)

        def remove() -> None:
            with self._lock:
                callbacks = self._done_callbacks.get(job_id, [])
                if callback in callbacks:
                    callbacks.remove(callback)
                if not callbacks:
                    self._done_callbacks.pop(job_id, None)

        return remove

    def _emit(self, job: JobRecord, event: str, data: dict[str, Any]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for listener in listeners:
            try:
                listener(job, event, data)
            except Exception:
                log.exception("event listener failed on %s", event)

    def _broadcast_status(self) -> None:
        status = {"status": {"exec_info": {"queue_remaining": self.queue_remaining()}}}
        self._emit(_BROADCAST, "status", status)

    def _on_job_done(self, job: JobRecord) -> None:
        with self._lock:
            callbacks = self._done_callbacks.pop(job.id, [])
        for callback in callbacks:
            try:
                callback(job)
            except Exception:
                log.exception("done callback failed for %s", job.id)

    # ---- workers -----------------------------------------------------------------------------

    def _worker_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self.queue.get(timeout=0.5)
            except Exception:
                log.exception("queue receive failed")
                self._stopping.wait(1.0)
                continue
            if item is None:
                continue
            try:
                self._run_item(item)
            except Exception:  # a bug here must not kill the worker thread
                log.exception("worker failed on job %s", item.job_id)
                with contextlib.suppress(Exception):
                    self.queue.nack(item, delay=self.settings.retry_backoff_s)

    def _run_item(self, item: QueueItem) -> None:
        job = self.store.get(item.job_id)
        if job is None or job.status.terminal:
            self.queue.ack(item)  # finished before a crash, or canceled: nothing to run
            return
        if job.status is JobStatus.RUNNING:
            self.queue.nack(item, delay=1.0)  # claimed elsewhere; look again later
            return
        if self._stopping.is_set():
            self.queue.nack(item)
            return
        try:
            runtime = self.runtime
        except RuntimeError:
            self.queue.nack(item, delay=5.0)
            self._stopping.wait(5.0)
            return
        control = JobControl()
        with self._lock:
            self._controls[job.id] = control
            self._running[job.id] = job
        self._broadcast_status()

        def forward(event: str, data: dict[str, Any]) -> None:
            self._emit(job, event, data)
            if event == "executing" and data.get("node") is None:  # the end is stored
                final = self.store.get(job.id)
                if final is not None and final.status.terminal:
                    self._on_job_done(final)

        try:
            outcome = run_job(
                job, runtime=runtime, backends=self.backends, settings=self.settings,
                listener=forward, control=control, worker_id=self.worker_id,
            )
        except Exception as exc:  # a bug in the job layer: fail the job rather than leave it running
            log.exception("job %s: run_job raised", job.id)
            self.store.transition(job.id, {JobStatus.RUNNING, JobStatus.QUEUED}, JobStatus.FAILED,
                                  finished_at=time.time(), error={"type": "internal_error", "message": str(exc)})
            outcome = JobOutcome(job.id, status=JobStatus.FAILED, record=self.store.get(job.id))
        finally:
            with self._lock:
                self._controls.pop(job.id, None)
                self._running.pop(job.id, None)
        if outcome.retry_delay_s is not None:
            self.queue.nack(item, delay=outcome.retry_delay_s)
        else:
            self.queue.ack(item)
        if outcome.record is not None and outcome.record.status.terminal:
            self._on_job_done(outcome.record)
        self._broadcast_status()


# A pseudo job for events addressed to every client (queue status).
_BROADCAST = JobRecord(id="", workflow={})
