"""JobQueue contract: the local queue and SQS behave the same for what the workers rely on."""

from __future__ import annotations

import time

from comfyd.engine.interfaces import JobQueue


def test_is_a_job_queue(queue) -> None:
    assert isinstance(queue, JobQueue)


def test_put_get_ack(queue) -> None:
    queue.put("a", 1)
    assert queue.depth() == 1
    item = queue.get(timeout=1)
    assert (item.job_id, item.priority, item.receive_count) == ("a", 1, 1)
    assert queue.depth() == 0
    assert queue.get(timeout=0) is None  # invisible while held
    queue.ack(item)
    assert queue.get(timeout=0) is None and queue.depth() == 0


def test_empty_get_waits_then_returns_none(queue) -> None:
    started = time.monotonic()
    assert queue.get(timeout=0.3) is None
    assert time.monotonic() - started >= 0.25


def test_higher_priority_first(queue) -> None:
    queue.put("low", 1)
    queue.put("high", 9)
    queue.put("mid", 5)
    got = []
    for _ in range(3):
        item = queue.get(timeout=1)
        got.append(item.job_id)
        queue.ack(item)
    assert got == ["high", "mid", "low"]


def test_nack_gives_back_and_counts_receives(queue) -> None:
    queue.put("a", 1)
    item = queue.get(timeout=1)
    queue.nack(item)
    again = queue.get(timeout=1)
    assert again.job_id == "a" and again.receive_count == 2
    queue.nack(again, delay=30)
    assert queue.get(timeout=0) is None  # delayed
    queue.extend(again, 30)  # a heartbeat on a held item is accepted


def test_removed_job_is_never_delivered(queue) -> None:
    queue.put("a", 1)
    queue.put("b", 1)
    removed = queue.remove("a")
    assert isinstance(removed, bool)
    seen = []
    for _ in range(2):
        item = queue.get(timeout=1)
        if item is not None:
            seen.append(item.job_id)
            queue.ack(item)
    assert "b" in seen
    if removed:
        assert "a" not in seen
