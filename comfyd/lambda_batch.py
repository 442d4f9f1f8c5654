"""One SQS record of a Lambda batch, seen by the job layer as the JobQueue it was received from."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from comfyd.engine.interfaces import JobQueue, QueueItem

log = logging.getLogger("comfyd.lambda")


class BatchRecordQueue:
    """One SQS record of a Lambda batch, as the JobQueue a worker handles it with.

    Lambda deletes the messages the function does not report as failed, so `ack` only records
    success; `nack` records failure and, like the real queue, makes the message visible again
    after `delay`; `extend` (the worker's heartbeat) keeps it invisible while the job runs. The
    visibility changes go to comfyd's SQS queue with the record's receipt handle, when the
    record came from one of its priority bands (otherwise the queue's own timeout applies).
    """

    def __init__(self, queue: JobQueue, record: dict[str, Any], band: int | None) -> None:
        self.queue = queue
        self.record = record
        self.band = band
        self.acked: bool | None = None  # None: the worker decided nothing

    def item(self, job_id: str, priority: int) -> QueueItem:
        from comfyd.engine.interfaces import QueueItem

        receive_count = int((self.record.get("attributes") or {}).get("ApproximateReceiveCount", "1"))
        handle = str(self.record.get("receiptHandle", ""))
        receipt = f"{self.band}:{handle}" if self.band is not None else handle  # the SQS queue's receipt form
        return QueueItem(job_id=job_id, priority=priority, receipt=receipt, receive_count=receive_count)

    def ack(self, item: QueueItem) -> None:
        self.acked = True

    def nack(self, item: QueueItem, delay: float = 0.0) -> None:
        self.acked = False
        if self.band is not None:
            try:
                self.queue.nack(item, delay)
            except Exception:
                log.exception("job %s: could not delay its message; the queue's visibility timeout applies", item.job_id)

    def extend(self, item: QueueItem, seconds: float) -> None:
        if self.band is not None:
            self.queue.extend(item, seconds)

    def put(self, job_id: str, priority: int) -> None:
        self.queue.put(job_id, priority)

    def get(self, timeout: float) -> QueueItem | None:
        raise NotImplementedError("a Lambda batch is delivered to the function, not received from it")

    def remove(self, job_id: str) -> bool:
        return self.queue.remove(job_id)

    def depth(self) -> int:
        return self.queue.depth()


def band_of(record: dict[str, Any], base_name: str | None) -> int | None:
    """Index of the record's queue among comfyd's priority bands (comfyd.backends.aws.sqs_queue)."""
    if not base_name:
        return None
    from comfyd.backends.aws.sqs_queue import queue_names

    queue = str(record.get("eventSourceARN", "")).rsplit(":", 1)[-1]
    names = queue_names(base_name)
    return names.index(queue) if queue in names else None
