"""SQS job queue over real HTTP: priority bands, visibility, redelivery, dead letters."""

from __future__ import annotations

import json
import time

import pytest

from comfyd.backends.aws import build_queue
from comfyd.backends.aws.init import ensure_queues
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.aws.sqs_queue import BANDS, SqsJobQueue, band_for, queue_names
from comfyd.backends.faultproxy import Fault, FaultProxy
from comfyd.settings import Settings


def _queue(settings: Settings, visibility_timeout_s: int = 30) -> SqsJobQueue:
    return build_queue(settings, AwsSession.from_settings(settings), visibility_timeout_s=visibility_timeout_s)


def test_priority_bands() -> None:
    assert [band_for(p) for p in range(1, 11)] == [2, 2, 2, 1, 1, 1, 0, 0, 0, 0]
    assert queue_names("jobs") == ["jobs-high", "jobs-medium", "jobs"]
    assert len(BANDS) == 3
    for bad in (0, 11, "5", 2.5, True):
        with pytest.raises(ValueError, match="1..10"):
            band_for(bad)


def test_put_get_ack(settings: Settings, provisioned) -> None:
    queue = _queue(settings)
    queue.put("job-1", 1)
    assert queue.depth() == 1
    item = queue.get(timeout=1)
    assert (item.job_id, item.priority, item.receive_count) == ("job-1", 1, 1)
    assert queue.depth() == 0  # in flight, not waiting
    queue.ack(item)
    assert queue.get(timeout=0) is None


def test_higher_priority_first(settings: Settings, provisioned) -> None:
    queue = _queue(settings)
    for job_id, priority in [("low", 1), ("high", 9), ("mid", 5), ("low2", 2), ("top", 10)]:
        queue.put(job_id, priority)
    assert queue.depth() == 5
    got = []
    for _ in range(5):
        item = queue.get(timeout=1)
        got.append(item.job_id)
        queue.ack(item)
    assert got[:2] in (["high", "top"], ["top", "high"])
    assert got[2] == "mid"
    assert sorted(got[3:]) == ["low", "low2"]


def test_long_poll_waits_for_a_message(settings: Settings, provisioned) -> None:
    queue = _queue(settings)
    started = time.monotonic()
    assert queue.get(timeout=1) is None
    assert 0.9 <= time.monotonic() - started < 5


def test_unacked_message_comes_back_after_visibility_timeout(settings: Settings, provisioned) -> None:
    queue = _queue(settings, visibility_timeout_s=1)
    queue.put("job-1", 3)
    first = queue.get(timeout=1)
    assert queue.get(timeout=0) is None  # invisible while "running"
    time.sleep(1.2)  # the worker died: no ack, no extend
    again = queue.get(timeout=2)
    assert again.job_id == "job-1"
    assert again.receive_count == 2
    queue.ack(first)  # a stale receipt (the message moved on) is logged, not raised
    queue.ack(again)
    assert queue.depth() == 0


def test_extend_keeps_a_running_job_invisible(settings: Settings, provisioned) -> None:
    queue = _queue(settings, visibility_timeout_s=1)
    queue.put("job-1", 1)
    item = queue.get(timeout=1)
    for _ in range(3):  # a heartbeat
        queue.extend(item, 1)
        time.sleep(0.5)
    assert queue.get(timeout=0) is None
    queue.ack(item)


def test_nack_makes_visible_again(settings: Settings, provisioned) -> None:
    queue = _queue(settings)
    queue.put("job-1", 8)
    item = queue.get(timeout=1)
    queue.nack(item)
    again = queue.get(timeout=1)
    assert again.job_id == "job-1" and again.receive_count == 2
    queue.nack(again, delay=30)
    assert queue.get(timeout=0) is None


def test_dead_letter_after_max_receives(settings: Settings, aws: AwsSession) -> None:
    ensure_queues(aws, settings.sqs_queue, max_receives=2)
    queue = _queue(settings)
    queue.put("doomed", 1)
    for expected in (1, 2):
        item = queue.get(timeout=1)
        assert item.receive_count == expected
        queue.nack(item)  # the worker crashed on it
    assert queue.get(timeout=1) is None  # SQS moved it to the DLQ
    dead = queue.dead_letters()
    assert [d.job_id for d in dead] == ["doomed"]
    queue.ack_dead_letter(dead[0])
    assert queue.dead_letters() == []


def test_foreign_message_is_left_alone(settings: Settings, provisioned, aws: AwsSession) -> None:
    queue = _queue(settings)
    url = queue.url(2)
    aws.client("sqs").send_message(QueueUrl=url, MessageBody="not json")
    aws.client("sqs").send_message(QueueUrl=url, MessageBody=json.dumps({"job_id": "ok", "priority": 1}))
    seen = set()
    for _ in range(3):
        item = queue.get(timeout=0)
        if item is not None:
            seen.add(item.job_id)
            queue.ack(item)
    assert seen == {"ok"}


def test_remove_cannot_reach_into_sqs(settings: Settings, provisioned) -> None:
    queue = _queue(settings)
    queue.put("job-1", 1)
    assert queue.remove("job-1") is False
    assert queue.get(timeout=1).job_id == "job-1"


def test_missing_queue_says_run_init(settings: Settings) -> None:
    with pytest.raises(LookupError, match="comfyd aws init"):
        _queue(settings).put("job-1", 1)


def test_forged_receipt_is_refused(settings: Settings, provisioned) -> None:
    from comfyd.engine.interfaces import QueueItem

    with pytest.raises(ValueError, match="did not issue"):
        _queue(settings).ack(QueueItem(job_id="x", priority=1, receipt="local-token"))


def test_throttled_send_is_retried(fault_proxy: FaultProxy, settings: Settings, provisioned) -> None:
    queue = _queue(settings)
    rule = fault_proxy.add(Fault("throttle", service="sqs", operation="SendMessage", times=2))
    queue.put("job-1", 1)
    assert rule.hits == 2
    assert queue.get(timeout=1).job_id == "job-1"
