"""Run ONE job record end to end: claim (queued -> running), execute under a wall-time budget,
store outputs, write the terminal state or queue it again for a retry, notify, record metrics,
and only then announce the end to listeners.

Any worker (the in-process `JobManager`, the SQS worker, a Lambda) calls `run_job`, so the
semantics (timeouts, retries, typed terminal reasons) are the same everywhere. Every state change
is written to the `JobStore` before it is announced.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from comfyd.engine.errors import OutputsPendingError, RetryableError, is_retryable
from comfyd.engine.interfaces import JobRecord, JobStatus, JobStore
from comfyd.engine.job_budget import JobBudget
from comfyd.engine.job_events import EventRecorder, publish, record_metrics
from comfyd.engine.job_inputs import fetch_job_inputs
from comfyd.engine.job_outputs import store_outputs
from comfyd.engine.job_runtime import EventListener, JobBackends, JobRuntime

if TYPE_CHECKING:
    from comfyd.settings import Settings

log = logging.getLogger("comfyd.jobs")


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
        # Called once a hard timeout has ended the job in the store while its thread is still
        # stuck in it: the scheduler gives the slot to a new thread (JobManager).
        self.on_abandon: Callable[[], None] | None = None

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


def hard_timeout_grace_s(timeout_s: float) -> float:
    """How long a job may ignore its interrupt after the budget before it is failed anyway."""
    return min(30.0, max(1.0, 0.1 * timeout_s))


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
    publish(backends, "job.started", job)

    recorder = EventRecorder(job, listener, backends)
    spooled = _spooled_outputs(job, backends, settings)
    if spooled is not None:  # an earlier attempt rendered them; they are in the store now
        log.info("job %s: outputs of an earlier attempt are stored; completing without rendering again", job.id)
        return _finish(job, _Result("success", dict(job.outputs), dict(job.node_timings)), None, backends,
                       settings, recorder, control, worker_id, stored_keys=spooled)
    timer = _start_timeout(job, control, settings, backends, recorder, worker_id)
    recorder.on_loading = timer.loading
    try:
        result, exception = _execute(job, runtime, recorder, control, backends.output_store)
    finally:
        timer.cancel()
    return _finish(job, result, exception, backends, settings, recorder, control, worker_id)


def _spooled_outputs(job: JobRecord, backends: JobBackends, settings: Settings) -> list[str] | None:
    """The keys of an earlier attempt's outputs once they are all stored (waiting for this
    host's spool to upload them), or None: render again (they wait in another host's spool, or
    the store cannot say)."""
    await_stored = getattr(backends.output_store, "await_stored", None)
    if not job.outputs_spooled or not job.output_keys or await_stored is None:
        return None
    try:
        if await_stored(list(job.output_keys), settings.job_timeout_s):
            return list(job.output_keys)
    except Exception as exc:
        log.warning("job %s: could not check its spooled outputs (%s); rendering again", job.id, exc)
    return None


@dataclass
class _Result:
    """The executor's result, normalised (also built when execute itself raised)."""

    status: str  # success | error | interrupted
    outputs: dict[str, Any] = field(default_factory=dict)
    node_timings: dict[str, float] = field(default_factory=dict)
    error: dict[str, Any] | None = None


def _execute(
    job: JobRecord, runtime: JobRuntime, recorder: EventRecorder, control: JobControl, output_store: Any = None,
) -> tuple[_Result, BaseException | None]:
    try:
        # Inputs uploaded through another host, exactly as validated at submit (job_inputs).
        try:
            fetch_job_inputs(job.extra_data, output_store, runtime.env.input_dir)
        except (ValueError, KeyError):
            raise  # a damaged or vanished input: retrying will not help
        except Exception as exc:  # the store is unreachable: try again later
            raise RetryableError(f"could not fetch the job's input files: {exc}") from exc
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
    recorder: EventRecorder,
    control: JobControl,
    holder: str | None,
    stored_keys: list[str] | None = None,
) -> JobOutcome:
    store = backends.job_store
    if control.reason == "lost" or (result.status == "success" and not _still_held(store, job.id, holder)):
        # Another worker runs (or ended) this job now: its run stores and reports the result.
        control.stop("lost")
        log.warning("job %s: no longer held by worker %s; dropping this run's result", job.id, holder)
        return JobOutcome(job.id, skipped=True, record=store.get(job.id))
    output_keys: list[str] = list(stored_keys or [])
    spooled: dict[str, Any] = {}  # outputs rendered but still in a spool: kept for the retry
    if result.status == "success" and stored_keys is None:
        try:
            output_keys = store_outputs(job, result.outputs, backends.output_store, settings)
        except Exception as exc:
            log.warning("job %s: storing outputs failed: %s", job.id, exc)
            if isinstance(exc, OutputsPendingError) and exc.keys:
                spooled = {"outputs": result.outputs, "output_keys": exc.keys, "node_timings": result.node_timings,
                           "outputs_spooled": True}
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
                            error=_job_error(result.error, "retryable"), **spooled)

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
        finished_at=finished, outputs=result.outputs, output_keys=output_keys, outputs_spooled=False,
        node_timings=result.node_timings, error=error, messages=recorder.messages_for(status, error),
        progress=recorder.progress,
    )
    if not written:  # a hard timeout, an operator or a worker that took it over: drop this result
        return JobOutcome(job.id, skipped=True, record=store.get(job.id))
    final = store.get(job.id) or replace(job, status=status, finished_at=finished, outputs=result.outputs)
    record_metrics(backends.metrics, final, result.node_timings)
    publish(backends, "job.completed", final)
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
    job: JobRecord, backends: JobBackends, recorder: EventRecorder, holder: str | None, delay: float,
    error: dict[str, Any] | None, attempts: int | None = None, **kept: Any,
) -> JobOutcome:
    fields: dict[str, Any] = {"worker_id": None, "heartbeat_at": None, "lease_s": None, "error": error,
                              "progress": recorder.progress, **kept}
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
        publish(backends, "job.completed", final)
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


def _start_timeout(
    job: JobRecord, control: JobControl, settings: Settings, backends: JobBackends, recorder: EventRecorder,
    holder: str | None,
) -> JobBudget:
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
            if control.on_abandon is not None:  # its slot is free as its status says: replace the thread
                control.on_abandon()
            final = backends.job_store.get(job.id)
            if final is not None:
                record_metrics(backends.metrics, final, {})
                publish(backends, "job.completed", final)
                recorder.announce_end(final, error)

    return JobBudget(budget, hard_timeout_grace_s(budget), soft, hard, f"comfyd-timeout-{job.id[:8]}")
