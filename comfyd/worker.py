"""`comfyd worker`: take jobs from the shared queue (SQS) and run them, one at a time.

Loop: long-poll the queue -> read the job record -> run it with the job layer's `run_job`
(claim, execute, store outputs, write the end, notify, metrics) while a heartbeat thread keeps
the message invisible -> delete the message (or give it back with the retry delay).

Effectively-once, across any number of workers:
- `run_job` claims a job with a conditional transition (queued -> running, recording this
  worker as its holder) and writes its end with another (running -> terminal, only while this
  worker holds it), so of two workers holding the same job at most one records a result.
- Liveness comes from the job record, not from SQS: the heartbeat renews the holder's lease on
  the record (`heartbeat_at`, a write that succeeds only while the record is running and held
  by this worker) each time it extends the message. A message for a running job whose lease is
  current is a duplicate (SQS at-least-once, or a sweeper's second send) and is left alone.
  Only once the lease has lapsed (the holder died) does a worker take the job over (running ->
  queued, conditional on the holder and heartbeat it saw, so one of several wins) and run it.
  A holder whose lease write finds the record ended or taken over stops its run at once.
  A message whose job is already terminal (finished before the crash, or canceled while
  waiting) is just deleted.
- A job whose message kept coming back (the worker dies on it every time) lands in the SQS
  dead-letter queue after MAX_RECEIVES deliveries; workers mark such jobs failed.

Cancel: an API server records a cancel request on the job record; `CancelWatch` polls it while
the job runs and stops the job as a local cancel would (a request on a job not yet started
cancels it at claim). Housekeeping also sweeps for jobs whose API process died before sending
them (`comfyd.engine.sweeper`). See docs/aws.md.

`run_worker(settings, stop_event)` is the entry point (`comfyd worker` calls it); `python -m
comfyd.worker` is the same without the CLI.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyd.engine.interfaces import JobRecord, JobStatus, QueueItem
from comfyd.engine.sweeper import requeue_unsent, sweep_interval_s
from comfyd.settings import Settings
from comfyd.worker_liveness import (  # noqa: F401  (LEASE_BEATS, last_beat: part of this module's API)
    LEASE_BEATS,
    CancelWatch,
    Heartbeat,
    JobLease,
    heartbeat_interval_s,
    last_beat,
    lease_for,
    lease_left_s,
)

if TYPE_CHECKING:
    from comfyd.engine.jobs import JobControl, JobRuntime
    from comfyd.runtime import Services

log = logging.getLogger("comfyd.worker")

DEFAULT_VISIBILITY_S = 60  # how long a received job stays invisible between heartbeats
POLL_S = 20.0  # long-poll wait per receive
QUEUE_DEPTH_EVERY_S = 15.0
DEAD_LETTERS_EVERY_S = 60.0
CANCEL_POLL_S = 1.0  # how often a running job's record is checked for a cancel request


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerStats:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    canceled: int = 0  # stopped (or dropped before starting) on a client's cancel request
    skipped: int = 0  # terminal, unknown or held by another worker
    duplicates: int = 0  # of those: deliveries of a job whose live holder runs it (left to it)
    taken_over: int = 0  # redelivered after a worker died mid-job (its lease lapsed)
    lost: int = 0  # runs stopped because the record was ended elsewhere or taken over
    dead_letters: int = 0
    requeued: int = 0  # unsent jobs this worker's sweeps enqueued
    outcomes: dict[str, str] = field(default_factory=dict)  # job id -> last status seen


class Worker:
    """One queue consumer. Not thread-safe: one Worker per loop."""

    def __init__(
        self,
        settings: Settings,
        services: Services,
        runtime: JobRuntime,
        *,
        worker_id: str | None = None,
        visibility_s: float = DEFAULT_VISIBILITY_S,
        poll_s: float = POLL_S,
        cancel_poll_s: float = CANCEL_POLL_S,
    ) -> None:
        self.settings = settings
        self.services = services
        self.runtime = runtime
        self.worker_id = worker_id or new_worker_id()
        self.visibility_s = visibility_s
        self.lease_s = lease_for(visibility_s)
        self.poll_s = poll_s
        self.cancel_poll_s = cancel_poll_s
        # The queue hides a received message for this long; the heartbeat renews it at a third.
        if hasattr(services.queue, "visibility_timeout_s"):
            services.queue.visibility_timeout_s = max(1, math.ceil(visibility_s))
        self.stats = WorkerStats()
        self.control: JobControl | None = None  # of the running job: `shutdown` requeues it
        self.heartbeat: Heartbeat | None = None  # of the running job
        self._drain_timer: threading.Timer | None = None
        self._next_depth = 0.0
        self._next_dead_letters = 0.0
        self._next_sweep = 0.0

    # --- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_jobs: int | None = None) -> WorkerStats:
        log.info("worker %s consuming %s", self.worker_id, type(self.services.queue).__name__)
        try:
            while not stop.is_set() and (max_jobs is None or self.stats.received < max_jobs):
                self._housekeeping()
                try:
                    item = self.services.queue.get(timeout=self.poll_s)
                except Exception as exc:
                    log.error("queue receive failed: %s", exc)
                    stop.wait(min(self.settings.retry_backoff_s * 4, 30.0) or 1.0)
                    continue
                if item is None:
                    continue
                if stop.is_set():  # received while draining: give it straight back, untouched
                    self.services.queue.nack(item, delay=0)
                    break
                self.stats.received += 1
                self.handle(item)
        finally:
            if self._drain_timer is not None:
                self._drain_timer.cancel()
        return self.stats

    def drain(self, grace_s: float) -> None:
        """Shutdown (SIGTERM): take no more work; the running job may finish within `grace_s`,
        then it is handed back (queued again, its message visible at once, the attempt not
        counted). The caller sets the loop's stop event."""
        if self._drain_timer is None:
            log.info("worker %s draining: running job gets %g s to finish", self.worker_id, grace_s)
            self._drain_timer = threading.Timer(grace_s, self.hand_back)
            self._drain_timer.daemon = True
            self._drain_timer.start()

    def hand_back(self) -> None:
        """Stop the running job now; run_job queues it again and the worker releases its message."""
        control = self.control
        if control is not None and control.stop("shutdown"):
            log.warning("worker %s: handing job back to the queue on shutdown", self.worker_id)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        metrics = self.services.metrics
        if now >= self._next_depth:
            self._next_depth = now + QUEUE_DEPTH_EVERY_S
            try:
                metrics.gauge("QueueDepth", self.services.queue.depth())
            except Exception as exc:
                log.warning("queue depth unavailable: %s", exc)
        if now >= self._next_dead_letters and hasattr(self.services.queue, "dead_letters"):
            self._next_dead_letters = now + DEAD_LETTERS_EVERY_S
            try:
                self.fail_dead_letters()
            except Exception as exc:
                log.warning("dead-letter check failed: %s", exc)
        if self.settings.requeue_after_s > 0 and now >= self._next_sweep:
            self._next_sweep = now + sweep_interval_s(self.settings.requeue_after_s)
            try:
                self.sweep()
            except Exception as exc:
                log.warning("sweep for unsent jobs failed: %s", exc)

    def sweep(self) -> list[str]:
        """Enqueue jobs stored by an API process that died before sending them (comfyd.engine.sweeper)."""
        sent = requeue_unsent(self.services.job_store, self.services.queue, self.settings.requeue_after_s)
        self.stats.requeued += len(sent)
        return sent

    # --- one message ---------------------------------------------------------------------
    def handle(self, item: QueueItem) -> None:
        job = self.services.job_store.get(item.job_id)
        if job is None or job.status.terminal:
            # Finished before a crash, canceled while waiting, or expired: nothing left to do.
            log.info("job %s is %s; dropping its message", item.job_id, job.status.value if job else "unknown")
            self._leave(item, job)
            return
        if job.status is JobStatus.RUNNING:
            job = self._take_over_if_lapsed(item, job)
            if job is None:
                return
        self._run(item, job)

    def _take_over_if_lapsed(self, item: QueueItem, job: JobRecord) -> JobRecord | None:
        """A message for a running job: the job to run if its holder's lease lapsed and this
        worker took it over; None (message dealt with) while the holder is alive or another
        worker got the job first."""
        store = self.services.job_store
        if lease_left_s(job, self.lease_s, time.time()) > 0:
            log.info("job %s: held by live worker %s; leaving delivery %d of its message to it",
                     job.id, job.worker_id, item.receive_count)
            self.stats.duplicates += 1
            self._leave(item, job)
            return None
        if store.take_over(job.id, job.worker_id, job.heartbeat_at):
            log.warning("job %s: worker %s stopped renewing its lease mid-job; taking it over (delivery %d)",
                        job.id, job.worker_id, item.receive_count)
            self.stats.taken_over += 1
        current = store.get(item.job_id)
        if current is None or current.status is not JobStatus.QUEUED:  # ended, or another worker got it
            self._leave(item, current)
            return None
        return current

    def _leave(self, item: QueueItem, job: JobRecord | None) -> None:
        """Done with a message this worker does not run (now)."""
        self.stats.skipped += 1
        if job is None or job.status.terminal:
            self.services.queue.ack(item)
            return
        # Another worker holds the job (or it waits for a retry). Put back, not deleted: this
        # may be the job's only message (an SQS duplicate delivery of the holder's own message
        # shares its fate, and a holder whose extensions failed may have lost its copy), and if
        # the holder dies it is what brings the job back. Looked at again when the lease would
        # have lapsed; dropped at the first delivery after the job ended.
        self.services.queue.nack(item, delay=self._look_again_s(job))

    def _look_again_s(self, job: JobRecord) -> float:
        left = lease_left_s(job, self.lease_s, time.time()) if job.status is JobStatus.RUNNING else 0.0
        return max(left, 0.0) + heartbeat_interval_s(self.visibility_s)

    def _run(self, item: QueueItem, job: JobRecord) -> None:
        from comfyd.engine.jobs import JobControl, run_job

        queue, store = self.services.queue, self.services.job_store
        control = JobControl()
        self.control = control
        self.services.metrics.gauge("JobsInFlight", 1)
        try:
            with (Heartbeat(queue, item, self.visibility_s, JobLease(store, self.worker_id, control)) as beat,
                  CancelWatch(store, job.id, control, self.cancel_poll_s)):
                self.heartbeat = beat
                outcome = run_job(job, runtime=self.runtime, backends=self.services, settings=self.settings,
                                  control=control, worker_id=self.worker_id, lease_s=self.lease_s)
        except Exception as exc:  # the store or queue failed around the job: let SQS redeliver it
            log.exception("job %s: worker failed around the job: %s", item.job_id, exc)
            self.services.metrics.increment("Errors", error_type=type(exc).__name__)
            queue.nack(item, delay=self.settings.retry_backoff_s)
            return
        finally:
            self.control = None
            self.heartbeat = None
            self.services.metrics.gauge("JobsInFlight", 0)

        if outcome.retry_delay_s is not None:
            self.stats.retried += 1
            queue.nack(item, delay=outcome.retry_delay_s)
            return
        if outcome.skipped:
            if control.reason == "lost":
                self.stats.lost += 1
            self._leave(item, outcome.record)
            return
        queue.ack(item)
        status = outcome.status.value if outcome.status else "unknown"
        self.stats.outcomes[job.id] = status
        if outcome.status is JobStatus.SUCCEEDED:
            self.stats.succeeded += 1
        elif outcome.status is JobStatus.CANCELED:
            self.stats.canceled += 1  # a client's request, not an error
        else:
            self.stats.failed += 1  # run_job counted it in Errors (record_metrics)

    # --- dead letters --------------------------------------------------------------------
    def fail_dead_letters(self) -> int:
        """Mark jobs SQS gave up on as failed (and tell subscribers); returns how many."""
        from comfyd.engine.job_views import prediction_view

        queue, store = self.services.queue, self.services.job_store
        count = 0
        for item in queue.dead_letters():  # type: ignore[attr-defined]
            job = store.get(item.job_id)
            if job is not None and job.status is JobStatus.RUNNING and not self._release_lapsed(job):
                # A spare message of a job a live worker runs (nacked on each delivery until SQS
                # gave up on it): not acked, so it is looked at again when it reappears in the
                # dead-letter queue, and deleted once the job has ended.
                continue
            error = {"type": "dead_letter", "message": f"no worker finished the job in {item.receive_count} deliveries"}
            if store.transition(item.job_id, {JobStatus.QUEUED}, JobStatus.FAILED,
                                finished_at=time.time(), error=error):
                final = store.get(item.job_id)
                if final is not None:
                    try:
                        self.services.notifier.publish("job.completed", prediction_view(final, sign=self.services.output_store.url),
                                                       {"job_id": final.id, "status": final.status.value,
                                                        "source": final.source})
                    except Exception:
                        log.exception("job %s: notifier failed on dead letter", item.job_id)
                self.services.metrics.increment("Errors", error_type="dead_letter")
                count += 1
            queue.ack_dead_letter(item)  # type: ignore[attr-defined]
        self.stats.dead_letters += count
        return count

    def _release_lapsed(self, job: JobRecord) -> bool:
        """Take a running job whose holder's lease lapsed back to queued (conditional, as a
        takeover); False while the holder is alive or someone else changed the record first."""
        if lease_left_s(job, self.lease_s, time.time()) > 0:
            return False
        return self.services.job_store.take_over(job.id, job.worker_id, job.heartbeat_at)


def run_worker(
    settings: Settings,
    stop_event: threading.Event | None = None,
    *,
    services: Services | None = None,
    runtime: JobRuntime | None = None,
    worker_id: str | None = None,
    visibility_s: float = DEFAULT_VISIBILITY_S,
    poll_s: float = POLL_S,
    max_jobs: int | None = None,
    on_start: Callable[[Worker], None] | None = None,
) -> WorkerStats:
    """Consume the configured queue until `stop_event` is set (or `max_jobs` were received).

    Builds the backends (`comfyd.runtime.build_services`) and the executor unless given; checks
    at start-up that the AWS region is enabled (InvalidRegion otherwise); `on_start` sees the
    Worker before the first receive. Returns counters.
    """
    from comfyd.runtime import build_services

    stop = stop_event or threading.Event()
    _verify_aws(settings)  # before anything talks to AWS: one clear error, not a retry loop
    own_services = services is None
    services = services or build_services(settings)
    try:
        runtime = runtime or services.executor_factory()
        _publish_models(settings, services, runtime, worker_id)
        worker = Worker(settings, services, runtime, worker_id=worker_id, visibility_s=visibility_s, poll_s=poll_s)
        if on_start is not None:
            on_start(worker)
        return worker.run(stop, max_jobs=max_jobs)
    finally:
        if own_services:
            services.close()


def _publish_models(settings: Settings, services: Services, runtime: JobRuntime, worker_id: str | None) -> None:
    """Tell the shared model catalog what this worker holds, so API hosts validate against it.
    A failure is logged: the worker still runs jobs (API hosts then miss its models)."""
    models = getattr(runtime.env, "models", None)
    if services.model_catalog is None or models is None:
        return
    from comfyd.catalog_publish import publish_models

    try:
        publish_models(settings, services.model_catalog, host=worker_id, paths=models.paths)
    except Exception as exc:
        log.warning("could not publish this worker's models to the catalog: %s", exc)


def _verify_aws(settings: Settings) -> None:
    """MissingCredentials / InvalidRegion (AwsConfigError, ValueError) at start-up."""
    from comfyd.backends.aws import session_for, uses_aws

    if uses_aws(settings):
        session_for(settings).verify()


def _load_runtime_factory(spec: str) -> Callable[[Settings], JobRuntime]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--runtime {spec!r}: expected MODULE:FUNCTION")
    return getattr(importlib.import_module(module_name), attribute)


def run_until_signalled(
    settings: Settings,
    *,
    runtime: JobRuntime | None = None,
    worker_id: str | None = None,
    visibility_s: float = DEFAULT_VISIBILITY_S,
    poll_s: float = POLL_S,
    max_jobs: int | None = None,
) -> int:
    """`comfyd worker` / `python -m comfyd.worker`: run until SIGTERM or SIGINT, then drain.

    First signal: no new work; the running job gets `settings.shutdown_grace_s` to finish, then
    is handed back. Second signal: hand it back now. Metrics are flushed as the backends close.
    Returns the exit status: 0, or 1 with a one-line error for missing credentials, a bad
    region or a missing setting."""
    from comfyd.backends.aws.session import AwsConfigError, InvalidRegion

    stop = threading.Event()
    workers: list[Worker] = []

    def on_signal(signum: int, _frame: Any) -> None:
        again = stop.is_set()
        stop.set()
        for worker in workers:
            if again:
                worker.hand_back()
            else:
                worker.drain(settings.shutdown_grace_s)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        stats = run_worker(settings, stop, runtime=runtime, worker_id=worker_id, visibility_s=visibility_s,
                           poll_s=poll_s, max_jobs=max_jobs, on_start=workers.append)
    except (InvalidRegion, AwsConfigError) as exc:  # also MissingCredentials, a missing setting
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    log.info("worker done: %s", stats)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comfyd.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--worker-id", help="name in the job records (default: host-pid-random)")
    parser.add_argument("--visibility-timeout", type=float, default=DEFAULT_VISIBILITY_S,
                        help="seconds a received job stays invisible between heartbeats")
    parser.add_argument("--poll", type=float, default=POLL_S, help="long-poll wait per receive, seconds")
    parser.add_argument("--max-jobs", type=int, help="exit after receiving this many jobs")
    parser.add_argument("--runtime", metavar="MODULE:FUNCTION",
                        help="build the executor with FUNCTION(settings) instead of the real nodes (tests)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=os.environ.get("COMFYD_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    runtime = _load_runtime_factory(args.runtime)(settings) if args.runtime else None
    return run_until_signalled(settings, runtime=runtime, worker_id=args.worker_id,
                               visibility_s=args.visibility_timeout, poll_s=args.poll, max_jobs=args.max_jobs)


if __name__ == "__main__":
    raise SystemExit(main())
