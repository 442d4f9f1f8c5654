"""Notifier on SNS: one message per job event, with message attributes for subscription filters.

Only the events in `events` are published (default: `job.completed`, which the job layer sends
for every end: succeeded, failed, canceled, timed_out). The message body is JSON: `{"event":
..., **payload}` (the job layer's view of the job: id, status, outputs, timings). Message
attributes (all String) are `event`, `status`, `job_id` and `source` (from the caller's
attributes, else the payload), so a subscription can filter with a policy such as
`{"status": ["failed", "timed_out"]}`; webhook attributes are never forwarded. SNS takes at most 256 KB: a larger payload loses its
bulky keys (outputs, timings) and gains `"truncated": true`; the job store has the full record.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from comfyd.backends.aws.retry import with_backoff
from comfyd.backends.aws.session import AwsSession

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024
MAX_ATTRIBUTES = 10  # SNS's limit per message
# Dropped in this order when a message is too large (the job store keeps everything).
_BULKY_KEYS = ("input", "logs", "outputs", "output", "output_urls", "node_timings", "messages", "comfyd", "error")
_PROMOTED_KEYS = ("status", "job_id", "source")
# Published by default: the end of a job, whatever the end was (attribute `status` tells which).
DEFAULT_EVENTS = frozenset({"job.completed", "job.failed"})
# Attributes meant for other notifiers (webhook URLs are the client's secret): never sent to SNS.
_PRIVATE_ATTRIBUTE_PREFIXES = ("webhook",)


def topic_arn(aws: AwsSession, topic: str) -> str:
    """COMFYD_SNS_TOPIC may be a full ARN or just the name (this account and region)."""
    if topic.startswith("arn:"):
        return topic
    ident = aws.identity()
    return f"arn:{ident.partition}:sns:{aws.region}:{ident.account}:{topic}"


def build_message(event: str, payload: dict[str, Any]) -> str:
    body = {"event": event, **payload}
    text = json.dumps(body, default=str, separators=(",", ":"))
    if len(text.encode()) <= MAX_MESSAGE_BYTES:
        return text
    for key in _BULKY_KEYS:
        body.pop(key, None)
        body["truncated"] = True
        text = json.dumps(body, default=str, separators=(",", ":"))
        if len(text.encode()) <= MAX_MESSAGE_BYTES:
            return text
    raise ValueError(f"{event} event for job {payload.get('job_id')!r} is over SNS's 256 KB even without outputs")


def build_attributes(event: str, payload: dict[str, Any], extra: dict[str, str] | None) -> dict[str, dict[str, str]]:
    values: dict[str, str] = {"event": event}
    for key in _PROMOTED_KEYS:
        value = payload.get(key)
        if value not in (None, ""):
            values[key] = str(getattr(value, "value", value))
    for key, value in (extra or {}).items():
        if key.startswith(_PRIVATE_ATTRIBUTE_PREFIXES):
            continue
        if value not in (None, ""):  # SNS refuses empty attribute values
            values[key] = str(value)
    if len(values) > MAX_ATTRIBUTES:
        raise ValueError(f"SNS allows {MAX_ATTRIBUTES} message attributes; this event has {sorted(values)}")
    return {key: {"DataType": "String", "StringValue": value} for key, value in values.items()}


class SnsNotifier:
    def __init__(
        self, aws: AwsSession, topic: str, *, events: frozenset[str] = DEFAULT_EVENTS,
        retry_attempts: int = 3, retry_backoff_s: float = 1.0,
    ) -> None:
        if not topic:
            raise ValueError("the SNS notifier needs COMFYD_SNS_TOPIC (a topic name or ARN)")
        self.aws = aws
        self.topic = topic
        self.events = events
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self._sns = aws.client("sns")
        self._arn: str | None = None

    @property
    def arn(self) -> str:
        if self._arn is None:
            self._arn = topic_arn(self.aws, self.topic)
        return self._arn

    def publish(self, event: str, payload: dict[str, Any], attributes: dict[str, str] | None = None) -> None:
        if event not in self.events:
            return
        message = build_message(event, payload)
        message_attributes = build_attributes(event, payload, attributes)
        with_backoff(
            lambda: self._sns.publish(TopicArn=self.arn, Message=message, MessageAttributes=message_attributes),
            attempts=self.retry_attempts, base_s=self.retry_backoff_s, what=f"SNS publish of {event}",
        )
