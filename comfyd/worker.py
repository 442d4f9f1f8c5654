"""`comfyd worker`: take jobs from the shared queue (SQS) and run them, one at a time.

Loop: long-poll the queue -> read the job record -> run it with the job layer's `run_job`
(claim, execute, store outputs, write the end, notify, metrics) while a heartbeat thread keeps
the message invisible -> delete the message (or give it back with the retry delay).

Effectively-once, across any number of workers:
- `run_job` claims a job with a conditional transition (queued -> running) and writes its end
  with another (running -> terminal), so of two workers holding the same job at most one
  records a result; the other's attempt is dropped.
- A worker killed mid-job stops extending the message; it reappears after the visibility
  timeout with a higher receive count. The next worker finds the record still `running`, takes
  it over (running -> queued, conditional) and runs it again. A message whose job is already
  terminal (finished before the crash, or canceled while waiting) is just deleted.
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
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyd.engine.interfaces import JobQueue, JobStatus, JobStore, QueueItem
from comfyd.engine.sweeper import requeue_unsent, sweep_interval_s
from comfyd.settings import Settings

if TYPE_CHECKING:
    from comfyd.cloud import Services
    from comfyd.engine.jobs import JobControl, JobRuntime

log = logging.getLogger("comfyd.worker")

DEFAULT_VISIBILITY_S = 60  # how long a received job stays invisible between heartbeats
POLL_S = 20.0  # long-poll wait per receive
QUEUE_DEPTH_EVERY_S = 15.0
DEAD_LETTERS_EVERY_S = 60.0
CANCEL_POLL_S = 1.0  # how often a running job's record is checked for a cancel request


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class CancelWatch:
    """Polls the job store every `interval_s` while a job runs; when an API server recorded a
    cancel request (`JobStore.request_cancel`), pulls the job's stop switch with its reason. The
    executor checks that switch between nodes and sampler steps; polling here keeps the store
    reads to one per interval instead of one per step."""

    def __init__(self, store: JobStore, job_id: str, control: JobControl, interval_s: float) -> None:
        self.store = store
        self.job_id = job_id
        self.control = control
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"cancel-watch-{job_id[:8]}", daemon=True)

    def __enter__(self) -> CancelWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                reason = self.store.cancel_requested(self.job_id)
            except Exception as exc:  # a missed poll only delays the cancel
                log.warning("job %s: cancel poll failed: %s", self.job_id, exc)
                continue
            if reason:
                if self.control.stop(reason):
                    log.info("job %s: cancel requested (%s); stopping it", self.job_id, reason)
                return


class Heartbeat:
    """Extends a received message's visibility every third of the timeout while a job runs."""

    def __init__(self, queue: JobQueue, item: QueueItem, visibility_s: float) -> None:
        self.queue = queue
        self.item = item
        self.visibility_s = visibility_s
        self.beats = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{item.job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        interval = max(self.visibility_s / 3.0, 0.2)
        while not self._stop.wait(interval):
            try:
                self.queue.extend(self.item, self.visibility_s)
                self.beats += 1
            except Exception as exc:  # keep trying: one lost beat is not yet a lost lease
                self.failures += 1
                log.warning("job %s: visibility extension failed: %s", self.item.job_id, exc)


@dataclass
class WorkerStats:
    received: int = 0
    succeeded: int = 0
    failed: int = 0
    retried: int = 0
    canceled: int = 0  # stopped (or dropped before starting) on a client's cancel request
    skipped: int = 0  # terminal, unknown or held by another worker
    taken_over: int = 0  # redelivered after a worker died mid-job
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
        self.poll_s = poll_s
        self.cancel_poll_s = cancel_poll_s
        # The queue hides a received message for this long; the heartbeat renews it at a third.
        if hasattr(services.queue, "visibility_timeout_s"):
            services.queue.visibility_timeout_s = max(1, math.ceil(visibility_s))
        self.stats = WorkerStats()
        self.control: JobControl | None = None  # of the running job: `shutdown` requeues it
        self._next_depth = 0.0
        self._next_dead_letters = 0.0
        self._next_sweep = 0.0

    # --- the loop ------------------------------------------------------------------------
    def run(self, stop: threading.Event, max_jobs: int | None = None) -> WorkerStats:
        log.info("worker %s consuming %s", self.worker_id, type(self.services.queue).__name__)
        while not stop.is_set() and (max_jobs is None or self.stats.received < max_jobs):
            self._housekeeping()
            try:
                item = self.services.queue.get(timeout=self.poll_s)
            except Exception as exc:
                log.error("queue receive failed: %s", exc)
                stop.wait(min(self.settings.retry_backoff_s * 4, 30.0) or 1.0)
                continue
            if item is not None:
                self.stats.received += 1
                self.handle(item)
        return self.stats

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
        from comfyd.engine.jobs import JobControl, run_job

        queue, store = self.services.queue, self.services.job_store
        job = store.get(item.job_id)
        if job is None or job.status.terminal:
            # Finished before a crash, canceled while waiting, or expired: nothing left to do.
            log.info("job %s is %s; dropping its message", item.job_id, job.status.value if job else "unknown")
            self.stats.skipped += 1
            queue.ack(item)
            return
        if job.status is JobStatus.RUNNING:
            if item.receive_count <= 1:
                # A duplicate delivery while its holder still heartbeats: look again later.
                self.stats.skipped += 1
                queue.nack(item, delay=self.visibility_s)
                return
            # Its holder stopped extending the message: it died. Take the job over.
            if store.transition(job.id, {JobStatus.RUNNING}, JobStatus.QUEUED, worker_id=None):
                log.warning("job %s: worker %s stopped mid-job; taking it over (delivery %d)",
                            job.id, job.worker_id, item.receive_count)
                self.stats.taken_over += 1
            job = store.get(item.job_id)
            if job is None or job.status.terminal:
                self.stats.skipped += 1
                queue.ack(item)
                return
            if job.status is not JobStatus.QUEUED:  # someone else claimed it meanwhile
                self.stats.skipped += 1
                queue.nack(item, delay=self.visibility_s)
                return

        control = JobControl()
        self.control = control
        self.services.metrics.gauge("JobsInFlight", 1)
        try:
            with Heartbeat(queue, item, self.visibility_s), CancelWatch(store, job.id, control, self.cancel_poll_s):
                outcome = run_job(job, runtime=self.runtime, backends=self.services, settings=self.settings,
                                  control=control, worker_id=self.worker_id)
        except Exception as exc:  # the store or queue failed around the job: let SQS redeliver it
            log.exception("job %s: worker failed around the job: %s", item.job_id, exc)
            self.services.metrics.increment("Errors", error_type=type(exc).__name__)
            queue.nack(item, delay=self.settings.retry_backoff_s)
            return
        finally:
            self.control = None
            self.services.metrics.gauge("JobsInFlight", 0)

        if outcome.retry_delay_s is not None:
            self.stats.retried += 1
            queue.nack(item, delay=outcome.retry_delay_s)
            return
        queue.ack(item)
        if outcome.skipped:
            self.stats.skipped += 1
            return
        status = outcome.status.value if outcome.status else "unknown"
        self.stats.outcomes[job.id] = status
        if outcome.status is JobStatus.SUCCEEDED:
            self.stats.succeeded += 1
        elif outcome.status is JobStatus.CANCELED:
            self.stats.canceled += 1  # a client's request, not an error
        else:
            self.stats.failed += 1
            error = (outcome.record.error if outcome.record else None) or {}
            self.services.metrics.increment("Errors", error_type=str(error.get("exception_type") or error.get("type") or status))

    # --- dead letters --------------------------------------------------------------------
    def fail_dead_letters(self) -> int:
        """Mark jobs SQS gave up on as failed (and tell subscribers); returns how many."""
        from comfyd.engine.job_views import prediction_view

        queue, store = self.services.queue, self.services.job_store
        count = 0
        for item in queue.dead_letters():  # type: ignore[attr-defined]
            error = {"type": "dead_letter", "message": f"no worker finished the job in {item.receive_count} deliveries"}
            if store.transition(item.job_id, {JobStatus.QUEUED, JobStatus.RUNNING}, JobStatus.FAILED,
                                finished_at=time.time(), error=error):
                final = store.get(item.job_id)
                if final is not None:
                    try:
                        self.services.notifier.publish("job.completed", prediction_view(final),
                                                       {"job_id": final.id, "status": final.status.value,
                                                        "source": final.source})
                    except Exception:
                        log.exception("job %s: notifier failed on dead letter", item.job_id)
                self.services.metrics.increment("Errors", error_type="dead_letter")
                count += 1
            queue.ack_dead_letter(item)  # type: ignore[attr-defined]
        self.stats.dead_letters += count
        return count


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

    Builds the backends (`comfyd.cloud.build_services`) and the executor unless given; checks
    at start-up that the AWS region is enabled (InvalidRegion otherwise); `on_start` sees the
    Worker before the first receive. Returns counters.
    """
    from comfyd.cloud import build_services

    stop = stop_event or threading.Event()
    own_services = services is None
    services = services or build_services(settings)
    try:
        _verify_region(settings)
        runtime = runtime or services.executor_factory()
        worker = Worker(settings, services, runtime, worker_id=worker_id, visibility_s=visibility_s, poll_s=poll_s)
        if on_start is not None:
            on_start(worker)
        return worker.run(stop, max_jobs=max_jobs)
    finally:
        if own_services:
            services.close()


def _verify_region(settings: Settings) -> None:
    from comfyd.cloud.aws import session_for, uses_aws

    if uses_aws(settings):
        session_for(settings).verify_region_enabled()


def _load_runtime_factory(spec: str) -> Callable[[Settings], JobRuntime]:
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SystemExit(f"--runtime {spec!r}: expected MODULE:FUNCTION")
    return getattr(importlib.import_module(module_name), attribute)


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
    stop = threading.Event()
    runtime = _load_runtime_factory(args.runtime)(settings) if args.runtime else None
    workers: list[Worker] = []

    def on_signal(signum: int, _frame: Any) -> None:
        # First signal: finish the running job, then exit. Second: give the job back now.
        if stop.is_set():
            for worker in workers:
                if worker.control is not None:
                    worker.control.stop("shutdown")
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stats = run_worker(settings, stop, runtime=runtime, worker_id=args.worker_id,
                       visibility_s=args.visibility_timeout, poll_s=args.poll, max_jobs=args.max_jobs,
                       on_start=workers.append)
    log.info("worker done: %s", stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
