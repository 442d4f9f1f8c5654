"""The in-process scheduler the server uses.

A pool of at most `settings.max_concurrent_jobs` worker threads pulling from a `JobQueue`
(higher priority first, FIFO within a priority), per-job cancel/interrupt, crash recovery on
start, and an event fan-out to websockets and sync waiters. Each job runs through `run_job`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from comfyd.engine.drain_rate import DrainMeter
from comfyd.engine.interfaces import (
    JobQueue,
    JobRecord,
    JobStatus,
    JobStore,
    QueueItem,
)
from comfyd.engine.job_run import JobControl, JobOutcome, cancel_unstarted, run_job
from comfyd.engine.job_runtime import JobRuntime
from comfyd.engine.sweeper import Sweeper, mark_enqueued

if TYPE_CHECKING:
    from comfyd.settings import Settings

log = logging.getLogger("comfyd.jobs")



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
        # Job ids a worker thread took from the queue and has not finished with: from the receive
        # (the queue stops counting it) to the ack, so queue_remaining never misses a claimed job.
        self._inflight: dict[int, str] = {}  # id(queue item) -> job id
        self._listeners: list[JobEventListener] = []
        self._done_callbacks: dict[str, list[Callable[[JobRecord], None]]] = {}
        self._number = 0
        self._submit_lock = threading.Lock()
        self._reserved = 0  # submissions past the depth check whose job is not yet in the queue
        self._worker_index = 0
        self._retired: set[threading.Thread] = set()
        self.drain = DrainMeter(settings.max_concurrent_jobs)
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
            for _ in range(self.settings.max_concurrent_jobs):
                self._start_worker()

    def _sweeps(self) -> bool:
        """Sweep for unsent jobs here? With a shared queue, unless in Lambda, where a thread runs
        only during invocations (the workers sweep too)."""
        return (self._shares_queue and self.settings.requeue_after_s > 0
                and "AWS_LAMBDA_FUNCTION_NAME" not in os.environ)

    def warm_up(self) -> None:
        """Build the runtime now (in a background thread at server start)."""
        with contextlib.suppress(RuntimeError):
            _ = self.runtime

    def stop(self, timeout: float = 10.0, grace_s: float = 0.0) -> None:
        """Stop taking jobs; running ones may finish within `grace_s` (a drain, as on SIGTERM),
        then they are interrupted and go back to the queue for the next start."""
        self._stopping.set()
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None
        wake = getattr(self.queue, "wake", None)  # optional: lets idle workers see the stop at once
        if callable(wake):
            wake()
        if grace_s > 0:  # a worker thread leaves its loop once its job has ended
            grace_deadline = time.monotonic() + grace_s
            for thread in self._threads:
                thread.join(max(0.0, grace_deadline - time.monotonic()))
        with self._lock:
            controls = list(self._controls.values())
        for control in controls:
            control.stop("shutdown")
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self._threads.clear()

    def _start_worker(self) -> None:
        with self._lock:
            self._worker_index += 1
            thread = threading.Thread(target=self._worker_loop, name=f"comfyd-worker-{self._worker_index}",
                                      daemon=True)
            self._threads.append(thread)
        thread.start()

    def _abandon_worker(self, thread: threading.Thread, job_id: str) -> None:
        """A hard timeout ended `thread`'s job while the thread is stuck in it: a new thread
        takes the slot now, and that one exits when (if) the job's code returns."""
        with self._lock:
            if thread not in self._threads or self._stopping.is_set():
                return
            self._threads.remove(thread)
            self._retired.add(thread)
            self._controls.pop(job_id, None)  # no longer running, as its status says
            self._running.pop(job_id, None)
        log.warning("worker %s is stuck in a timed-out job; starting a replacement", thread.name)
        self._start_worker()

    @property
    def workers_alive(self) -> bool:
        return not self._run_workers or (bool(self._threads) and all(t.is_alive() for t in self._threads))

    def recover(self) -> list[str]:
        """Requeue jobs left running or queued by a process that died (this process owns the
        local queue). A finished job is never re-run: its queue item is acked when received."""
        recovered = []
        running = self.store.list(status={JobStatus.RUNNING}, limit=100_000)
        # The crash is blamed on the jobs that were computing a node when the process died, not
        # on those loading a model (shared) or waiting between nodes; if none was computing,
        # every running job shares the blame (a crash during loading still ends a crash loop).
        computing = {j.id for j in running if isinstance(j.progress, dict) and j.progress.get("phase") == "node"}
        for job in running:
            blamed = not computing or job.id in computing
            if not blamed:
                if self.store.transition(job.id, {JobStatus.RUNNING}, JobStatus.QUEUED, worker_id=None,
                                         attempts=max(0, job.attempts - 1)):
                    log.warning("recovering job %s (was running, not computing, when the server stopped; "
                                "the attempt does not count)", job.id)
                    self.queue.put(job.id, job.priority)
                    recovered.append(job.id)
                continue
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
        # The depth check and a reservation are one step for this process: two submissions
        # racing for the last slot cannot both pass the check (with a shared queue, other API
        # processes still can; the bound is then approximate). The insert runs outside the lock,
        # so submissions wait for each other only for the check, never for a database write.
        with self._submit_lock:
            depth = self.queue.depth() + self._reserved
            if depth >= self.settings.queue_max_depth:
                raise QueueFullError(depth, self.retry_after_s(depth))
            self._reserved += 1
            if not job.number:
                job.number = self.next_number()
        try:
            job.status = JobStatus.QUEUED
            # One transaction where the queue can write the store's database (SQLite): the job
            # is stored, queued and marked sent together. Otherwise three steps.
            create_and_put = getattr(self.queue, "create_and_put", None)
            created = create_and_put(self.store, job) if callable(create_and_put) else None
            if created is None:
                created = self.store.create(job)
                if created:
                    self.queue.put(job.id, job.priority)
            if not created:
                existing = self.store.get(job.id)
                if existing is not None:
                    return SubmitResult(existing, created=False)
                self.queue.put(job.id, job.priority)
        finally:
            # Released once the queue counts the job (until then the reservation holds its slot).
            with self._submit_lock:
                self._reserved -= 1
        if job.enqueued_at is None:
            mark_enqueued(self.store, job.id)  # from now on no sweeper sends it again
        self.backends.metrics.increment("JobsSubmitted", source=job.source)
        self._broadcast_status()
        return SubmitResult(job, created=True)

    def retry_after_s(self, depth: int | None = None) -> int:
        """Seconds until the queue has drained (comfyd.engine.drain_rate)."""
        return self.drain.retry_after_s(self.queue.depth() if depth is None else depth)

    def drain_rate(self) -> float | None:
        return self.drain.rate()

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
        with self._lock:
            held = len(set(self._inflight.values()) | set(self._running))
        return self.queue.depth() + held

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
        me = threading.current_thread()
        while not self._stopping.is_set():
            if me in self._retired:
                with self._lock:
                    self._retired.discard(me)
                return
            try:
                item = self.queue.get(timeout=0.5)
            except Exception:
                log.exception("queue receive failed")
                self._stopping.wait(1.0)
                continue
            if item is None:
                continue
            with self._lock:
                self._inflight[id(item)] = item.job_id
            try:
                self._run_item(item)
            except Exception:  # a bug here must not kill the worker thread
                log.exception("worker failed on job %s", item.job_id)
                with contextlib.suppress(Exception):
                    self.queue.nack(item, delay=self.settings.retry_backoff_s)
            finally:
                with self._lock:
                    self._inflight.pop(id(item), None)

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
        worker = threading.current_thread()
        # The hard timeout fires on a timer thread: it retires *this* worker thread.
        control.on_abandon = lambda: self._abandon_worker(worker, job.id)
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
            self.queue.nack(item, delay=outcome.retry_delay_s)  # counted by the queue again
        else:
            self.queue.ack(item)
        with self._lock:
            self._inflight.pop(id(item), None)  # only now: a retry is never out of both counts
        if outcome.record is not None and outcome.record.status.terminal:
            self.drain.finished()
            self._on_job_done(outcome.record)
        self._broadcast_status()


# A pseudo job for events addressed to every client (queue status).
_BROADCAST = JobRecord(id="", workflow={})
