"""A running job's liveness signals in `comfyd worker`: the heartbeat that renews the holder's
lease on the job record and extends the message's visibility, the lease arithmetic every worker
judges a holder by, and the watch that turns a recorded cancel request into the job's stop switch.
See comfyd/worker.py and docs/aws.md."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from comfyd.engine.interfaces import JobQueue, JobRecord, JobStore, QueueItem

if TYPE_CHECKING:
    from comfyd.engine.jobs import JobControl

log = logging.getLogger("comfyd.worker")

LEASE_BEATS = 3  # a holder's lease lasts this many heartbeat periods (= its visibility timeout)


def heartbeat_interval_s(visibility_s: float) -> float:
    """How often a running job's message is extended and its lease renewed."""
    return max(visibility_s / 3.0, 0.2)


def lease_for(visibility_s: float) -> float:
    """How long a holder's heartbeat stays valid: LEASE_BEATS periods, so two lost beats in a
    row (a throttled write) do not yet make a live holder look dead."""
    return LEASE_BEATS * heartbeat_interval_s(visibility_s)


def last_beat(job: JobRecord) -> float | None:
    """The holder's latest sign of life: its last heartbeat, or the claim."""
    beats = [t for t in (job.heartbeat_at, job.started_at) if t is not None]
    return max(beats) if beats else None


def lease_left_s(job: JobRecord, lease_s: float, now: float) -> float:
    """Seconds until the holder's lease lapses (<= 0: lapsed; no beat at all counts as lapsed).
    The longer of the reader's lease and the one the holder recorded: a holder that beats less
    often (a longer visibility timeout) is not judged by a shorter lease."""
    beat = last_beat(job)
    if beat is None:
        return -1.0
    return beat + max(lease_s, job.lease_s or 0.0) - now


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


@dataclass
class JobLease:
    """What a heartbeat needs to renew the holder's lease on the job record."""

    store: JobStore
    worker_id: str
    control: JobControl  # `held` while run_job holds the job; pulled ("lost") when the lease is gone


class Heartbeat:
    """Every third of the visibility timeout while a job runs: renews the holder's lease on the
    job record (with `lease`) and extends the message's visibility. A lease write refused
    because the record is not running-by-this-worker any more stops the job ("lost")."""

    def __init__(self, queue: JobQueue, item: QueueItem, visibility_s: float, lease: JobLease | None = None) -> None:
        self.queue = queue
        self.item = item
        self.visibility_s = visibility_s
        self.lease = lease
        self.beats = 0  # visibility extensions
        self.lease_beats = 0  # lease renewals
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{item.job_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(heartbeat_interval_s(self.visibility_s)):
            if not self._renew_lease():
                return  # not this worker's job any more: stop extending its message too
            try:
                self.queue.extend(self.item, self.visibility_s)
                self.beats += 1
            except Exception as exc:  # keep trying: one lost beat is not yet a lost lease
                self.failures += 1
                log.warning("job %s: visibility extension failed: %s", self.item.job_id, exc)

    def _renew_lease(self) -> bool:
        """False once the record says the job is not this worker's (and the run was stopped)."""
        lease = self.lease
        if lease is None or not lease.control.held.is_set():
            return True  # not claimed yet, or its end is being written
        try:
            if lease.store.heartbeat(self.item.job_id, lease.worker_id, time.time()):
                self.lease_beats += 1
                return True
        except Exception as exc:  # a throttled write: the lease outlasts a few of these
            self.failures += 1
            log.warning("job %s: lease renewal failed: %s", self.item.job_id, exc)
            return True
        if not lease.control.held.is_set():
            return True  # run_job ended the job between the check and the write
        if lease.control.stop("lost"):
            log.warning("job %s: its record is no longer held by worker %s (ended elsewhere or taken over); "
                        "stopping the run", self.item.job_id, lease.worker_id)
        return False
