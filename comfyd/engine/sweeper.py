"""Send again the jobs whose queue message was never sent.

An API server stores a job, sends its queue message, then marks the record `enqueued_at`. One
that dies between the store and the send leaves a queued record that no worker will ever
receive. `requeue_unsent` finds such records (queued, unmarked, older than
`settings.requeue_after_s`), claims each with a conditional write so that of any number of
sweepers exactly one sends it, sends it and marks it. The claim is a lease of the same length:
a sweeper that dies between claim and send is replaced by a later sweep.

A message sent twice (the first sender was only slow) costs nothing but a receive or two:
workers claim a job (queued -> running) and finish it (running -> terminal) with conditional
transitions, and leave a message for a running job to its holder while the holder's lease on
the record is current (comfyd/worker.py), so it runs and completes once.

Sweeps run in every `comfyd worker` (its housekeeping) and in `comfyd serve` when the queue is
shared (SQS), so orphans are found even while no worker is up (a fleet scaled to zero).
"""

from __future__ import annotations

import logging
import threading
import time

from comfyd.engine.interfaces import JobQueue, JobStore

log = logging.getLogger("comfyd.sweeper")


def sweep_interval_s(requeue_after_s: float) -> float:
    """How often to sweep: a quarter of the threshold, between 1 s and 60 s."""
    return min(60.0, max(1.0, requeue_after_s / 4.0))


def mark_enqueued(store: JobStore, job_id: str) -> None:
    """Record that the job's message was sent. A failure only risks one harmless extra send."""
    try:
        store.update(job_id, enqueued_at=time.time())
    except Exception as exc:
        log.warning("job %s: could not mark it sent (a sweeper may send it again): %s", job_id, exc)


def requeue_unsent(
    store: JobStore, queue: JobQueue, older_than_s: float, *, now: float | None = None, limit: int = 100
) -> list[str]:
    """Send the queued jobs older than `older_than_s` that were never sent; the ids this call sent."""
    now = time.time() if now is None else now
    sent: list[str] = []
    for job in store.list_unsent(now - older_than_s, limit):
        if not store.claim_requeue(job.id, now, older_than_s):
            continue  # another sweeper has it (or it was sent or claimed meanwhile)
        try:
            queue.put(job.id, job.priority)
        except Exception as exc:  # the claim lapses after older_than_s: a later sweep tries again
            log.warning("job %s: re-enqueueing failed: %s", job.id, exc)
            continue
        log.warning("job %s was stored but never enqueued (its API process died?); enqueued it", job.id)
        mark_enqueued(store, job.id)
        sent.append(job.id)
    return sent


class Sweeper:
    """`requeue_unsent` every `sweep_interval_s(older_than_s)` in a daemon thread."""

    def __init__(self, store: JobStore, queue: JobQueue, older_than_s: float) -> None:
        self.store = store
        self.queue = queue
        self.older_than_s = older_than_s
        self.interval_s = sweep_interval_s(older_than_s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="comfyd-sweeper", daemon=True)

    def start(self) -> Sweeper:
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                requeue_unsent(self.store, self.queue, self.older_than_s)
            except Exception as exc:  # the store is unreachable now: the next sweep tries again
                log.warning("sweep for unsent jobs failed: %s", exc)
