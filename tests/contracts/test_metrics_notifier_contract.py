"""Metrics and Notifier contracts: recording never blocks on or raises into the caller."""

from __future__ import annotations

import time

from comfyd.engine.interfaces import Metrics, Notifier


def test_is_metrics(metrics) -> None:
    assert isinstance(metrics, Metrics)


def test_record_flush_render(metrics, kind: str) -> None:
    started = time.perf_counter()
    for i in range(200):
        metrics.observe("RequestLatency", 0.001 * i, "Seconds", route="/prompt")
        metrics.observe("NodeExecutionTime", 0.5, "Seconds", class_type="KSampler")
    metrics.increment("Errors", error_type="WorkflowValidationError")
    metrics.gauge("QueueDepth", 3)
    metrics.gauge("JobsInFlight", 1)
    assert time.perf_counter() - started < 1.0  # in memory: no I/O per call
    metrics.flush()
    text = metrics.render()
    assert isinstance(text, str)
    if kind == "embedded":
        assert "queue_depth" in text and "KSampler" in text
    else:
        assert metrics.sent_datums >= 5


def test_is_notifier(notifier) -> None:
    assert isinstance(notifier, Notifier)


def test_publish_accepts_job_events(notifier) -> None:
    payload = {"id": "j1", "status": "succeeded", "output": ["x.png"], "metrics": {"predict_time": 1.0}}
    for event in ("job.started", "job.output", "job.completed"):
        notifier.publish(event, payload, {"job_id": "j1", "status": "succeeded", "source": "prompt"})
    notifier.publish("job.completed", payload)  # attributes are optional
