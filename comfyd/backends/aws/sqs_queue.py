"""JobQueue on SQS: priorities as separate queues, a shared dead-letter queue.

Priority scheme (JobRecord.priority is 1..10, higher first; the default is 1). With
`COMFYD_SQS_QUEUE=NAME`:

    NAME-high    priorities 7..10
    NAME-medium  priorities 4..6
    NAME         priorities 1..3 (every job that did not ask for more)
    NAME-dlq     dead letters of all three, after MAX_RECEIVES deliveries (redrive policy)

A consumer asks the queues in that order on every round: the two upper ones with a short poll,
the base queue with a long poll of up to `poll_slice_s`. So a higher band is always served first
when it has messages, and an idle worker costs about three requests per `poll_slice_s`. Across
bands the order is best-effort (SQS short polls sample servers); within a band SQS standard
queues are roughly FIFO.

A received message stays invisible for `visibility_timeout_s`; a running job extends that
(`extend`) from a heartbeat, `ack` deletes it, `nack` makes it visible again. If a worker dies the
message reappears after the timeout and another worker takes the job once the holder's lease on
the job record has lapsed (comfyd/worker.py); after MAX_RECEIVES deliveries SQS moves it to the
DLQ. SQS may deliver a message twice; the lease and the job store's conditional transitions make
sure a job runs and finishes once (effectively-once).

`remove` cannot take one message out of SQS: it returns False, and a job canceled while waiting is
dropped by the worker that receives it (its record is already terminal).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from comfyd.backends.aws.retry import with_backoff
from comfyd.backends.aws.session import AwsSession
from comfyd.engine.interfaces import QueueItem

log = logging.getLogger(__name__)

MAX_RECEIVES = 5
MAX_VISIBILITY_S = 12 * 3600  # SQS's upper bound for a visibility timeout
MAX_WAIT_S = 20  # SQS's upper bound for a long poll


@dataclass(frozen=True)
class Band:
    suffix: str  # appended to the base queue name
    lowest: int  # lowest priority the band holds


# Highest band first: the order consumers ask in.
BANDS: tuple[Band, ...] = (Band("-high", 7), Band("-medium", 4), Band("", 1))
DLQ_SUFFIX = "-dlq"


def band_for(priority: int) -> int:
    """Index into BANDS of the queue that holds `priority`."""
    if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 10:
        raise ValueError(f"job priority must be an integer 1..10, got {priority!r}")
    for index, band in enumerate(BANDS):
        if priority >= band.lowest:
            return index
    raise AssertionError("unreachable: the lowest band starts at 1")


def queue_names(base: str) -> list[str]:
    """The band queues for COMFYD_SQS_QUEUE=`base`, highest band first."""
    return [base + band.suffix for band in BANDS]


def _missing_queue(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist")


class SqsJobQueue:
    def __init__(
        self,
        aws: AwsSession,
        name: str,
        *,
        visibility_timeout_s: int = 60,
        poll_slice_s: float = 5.0,
        retry_attempts: int = 3,
        retry_backoff_s: float = 1.0,
    ) -> None:
        if not name:
            raise ValueError("COMFYD_QUEUE=sqs needs COMFYD_SQS_QUEUE (the base queue name)")
        if name.endswith(".fifo"):
            raise ValueError(f"COMFYD_SQS_QUEUE={name!r}: comfyd uses standard queues (priority bands), not FIFO")
        if not 0 <= visibility_timeout_s <= MAX_VISIBILITY_S:
            raise ValueError(f"visibility timeout {visibility_timeout_s} s is outside SQS's 0..{MAX_VISIBILITY_S}")
        self.aws = aws
        self.name = name
        self.visibility_timeout_s = visibility_timeout_s
        self.poll_slice_s = poll_slice_s
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self._sqs = aws.client("sqs")
        self._urls: dict[int, str] = {}
        self._lock = threading.Lock()

    def _call(self, operation: str, **params: Any) -> dict[str, Any]:
        method = getattr(self._sqs, operation)
        return with_backoff(lambda: method(**params), attempts=self.retry_attempts, base_s=self.retry_backoff_s,
                            what=f"SQS {operation}")

    def url(self, band: int) -> str:
        with self._lock:
            found = self._urls.get(band)
        if found is None:
            name = self.name + BANDS[band].suffix
            try:
                found = self._call("get_queue_url", QueueName=name)["QueueUrl"]
            except ClientError as exc:
                if _missing_queue(exc):
                    raise LookupError(f"SQS queue {name!r} does not exist; run `comfyd aws init`") from exc
                raise
            with self._lock:
                self._urls[band] = found
        return found

    # --- JobQueue ------------------------------------------------------------------------
    def put(self, job_id: str, priority: int) -> None:
        band = band_for(priority)
        body = json.dumps({"job_id": job_id, "priority": priority})
        self._call("send_message", QueueUrl=self.url(band), MessageBody=body)

    def get(self, timeout: float) -> QueueItem | None:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            for band in range(len(BANDS)):
                last = band == len(BANDS) - 1
                left = deadline - time.monotonic()
                wait = min(math.ceil(min(self.poll_slice_s, left)), MAX_WAIT_S) if last and left > 0 else 0
                item = self._receive(band, wait)
                if item is not None:
                    return item
            if time.monotonic() >= deadline:
                return None

    def _receive(self, band: int, wait_s: int) -> QueueItem | None:
        reply = self._call(
            "receive_message", QueueUrl=self.url(band), MaxNumberOfMessages=1, WaitTimeSeconds=wait_s,
            VisibilityTimeout=self.visibility_timeout_s, MessageSystemAttributeNames=["ApproximateReceiveCount"],
        )
        for message in reply.get("Messages", []):
            try:
                body = json.loads(message["Body"])
                job_id, priority = str(body["job_id"]), int(body["priority"])
            except (ValueError, KeyError, TypeError):
                # Not ours (or corrupt): leave it to the redrive policy rather than lose it silently.
                log.error("SQS message %s on %s is not a comfyd job: %.200r", message.get("MessageId"),
                          self.name + BANDS[band].suffix, message.get("Body"))
                continue
            count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
            return QueueItem(job_id=job_id, priority=priority, receipt=f"{band}:{message['ReceiptHandle']}",
                             receive_count=count)
        return None

    def _split(self, item: QueueItem) -> tuple[str, str]:
        band, _, handle = item.receipt.partition(":")
        if not band.isdigit() or int(band) >= len(BANDS) or not handle:
            raise ValueError(f"queue item for job {item.job_id} has a receipt this SQS queue did not issue")
        return self.url(int(band)), handle

    def ack(self, item: QueueItem) -> None:
        url, handle = self._split(item)
        try:
            self._call("delete_message", QueueUrl=url, ReceiptHandle=handle)
        except ClientError as exc:
            # The visibility lapsed and someone else holds the message now: they will finish or drop it.
            log.warning("could not delete SQS message of job %s: %s", item.job_id, exc)

    def nack(self, item: QueueItem, delay: float = 0.0) -> None:
        url, handle = self._split(item)
        seconds = min(max(int(math.ceil(delay)), 0), MAX_VISIBILITY_S)
        try:
            self._call("change_message_visibility", QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=seconds)
        except ClientError as exc:
            log.warning("could not release SQS message of job %s: %s", item.job_id, exc)

    def extend(self, item: QueueItem, seconds: float) -> None:
        """Keep the message invisible for `seconds` from now (SQS counts from the call)."""
        url, handle = self._split(item)
        timeout = min(max(int(math.ceil(seconds)), 1), MAX_VISIBILITY_S)
        self._call("change_message_visibility", QueueUrl=url, ReceiptHandle=handle, VisibilityTimeout=timeout)

    def remove(self, job_id: str) -> bool:
        return False  # see the module docstring: cancel goes through the job store

    def depth(self) -> int:
        total = 0
        for band in range(len(BANDS)):
            reply = self._call("get_queue_attributes", QueueUrl=self.url(band),
                               AttributeNames=["ApproximateNumberOfMessages"])
            total += int(reply.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
        return total

    # --- dead letters --------------------------------------------------------------------
    def dead_letters(self, max_messages: int = 10) -> list[QueueItem]:
        """Messages SQS gave up on (a short poll of the DLQ); ack them with `ack_dead_letter`."""
        try:
            url = self._call("get_queue_url", QueueName=self.name + DLQ_SUFFIX)["QueueUrl"]
        except ClientError as exc:
            if _missing_queue(exc):
                return []
            raise
        reply = self._call("receive_message", QueueUrl=url, MaxNumberOfMessages=min(max_messages, 10),
                           WaitTimeSeconds=0, VisibilityTimeout=60,
                           MessageSystemAttributeNames=["ApproximateReceiveCount"])
        items = []
        for message in reply.get("Messages", []):
            try:
                job_id = str(json.loads(message["Body"])["job_id"])
            except (ValueError, KeyError, TypeError):
                continue
            items.append(QueueItem(job_id=job_id, priority=1, receipt=f"dlq:{message['ReceiptHandle']}",
                                   receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))))
        return items

    def ack_dead_letter(self, item: QueueItem) -> None:
        url = self._call("get_queue_url", QueueName=self.name + DLQ_SUFFIX)["QueueUrl"]
        self._call("delete_message", QueueUrl=url, ReceiptHandle=item.receipt.removeprefix("dlq:"))
