"""CloudWatch metrics over real HTTP: buffering, batching, the background flush, EMF, GPU gauges."""

from __future__ import annotations

import io
import json
import os
import stat
import time
from pathlib import Path

import pytest

from comfyd.backends.aws import build_metrics
from comfyd.backends.aws.cloudwatch import CloudWatchMetrics, EmfMetrics, normalise_unit, sample_gpus
from comfyd.backends.aws.session import AwsSession
from comfyd.backends.faultproxy import Fault, FaultProxy
from comfyd.settings import Settings


def _stats(aws: AwsSession, namespace: str, name: str, dimensions: dict[str, str] | None = None) -> dict:
    reply = aws.client("cloudwatch").get_metric_statistics(
        Namespace=namespace, MetricName=name, StartTime=time.time() - 600, EndTime=time.time() + 600, Period=60,
        Statistics=["SampleCount", "Sum", "Maximum"],
        Dimensions=[{"Name": k, "Value": v} for k, v in (dimensions or {}).items()],
    )
    points = reply["Datapoints"]
    return {"count": sum(p["SampleCount"] for p in points), "sum": sum(p["Sum"] for p in points),
            "max": max((p["Maximum"] for p in points), default=None)}


def _dimension_sets(aws: AwsSession, namespace: str, name: str) -> set[tuple]:
    metrics = aws.client("cloudwatch").list_metrics(Namespace=namespace, MetricName=name)["Metrics"]
    return {tuple(sorted((d["Name"], d["Value"]) for d in m["Dimensions"])) for m in metrics}


def test_observations_counters_and_gauges_reach_cloudwatch(settings: Settings, aws: AwsSession) -> None:
    metrics = CloudWatchMetrics(aws, "t1", background=False)
    for seconds in (0.5, 0.5, 1.0):
        metrics.observe("NodeExecutionTime", seconds, "Seconds", class_type="KSampler")
    metrics.observe("NodeExecutionTime", 0.25, "Seconds", class_type="VAEDecode")
    metrics.observe("RequestLatency", 0.01, "Seconds")
    metrics.increment("Errors", error_type="WorkflowValidationError")
    metrics.increment("Errors", 2, error_type="WorkflowValidationError")
    metrics.gauge("QueueDepth", 4)
    metrics.gauge("QueueDepth", 7)  # a gauge keeps its last value per flush
    metrics.gauge("JobsInFlight", 2)
    metrics.flush()

    assert _stats(aws, "t1", "NodeExecutionTime", {"class_type": "KSampler"}) == {"count": 3, "sum": 2.0, "max": 1.0}
    assert _stats(aws, "t1", "NodeExecutionTime", {"class_type": "VAEDecode"})["count"] == 1
    assert _stats(aws, "t1", "Errors", {"error_type": "WorkflowValidationError"})["sum"] == 3
    assert _stats(aws, "t1", "QueueDepth")["max"] == 7
    assert _stats(aws, "t1", "JobsInFlight")["max"] == 2
    assert _stats(aws, "t1", "RequestLatency")["count"] == 1
    assert (("class_type", "KSampler"),) in _dimension_sets(aws, "t1", "NodeExecutionTime")
    assert metrics.sent_datums == 6
    metrics.flush()  # nothing new: nothing sent
    assert metrics.sent_datums == 6
    assert metrics.render() == ""


def test_background_thread_flushes_off_the_request_path(settings: Settings, aws: AwsSession) -> None:
    metrics = CloudWatchMetrics(aws, "t2", flush_interval_s=0.1, sample_gpu=False)
    started = time.perf_counter()
    for _ in range(1000):
        metrics.observe("RequestLatency", 0.002, "Seconds", route="/prompt")
    assert time.perf_counter() - started < 0.5  # recording is a dict update, not an API call
    deadline = time.monotonic() + 5
    while metrics.sent_datums == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    metrics.close()
    assert _stats(aws, "t2", "RequestLatency", {"route": "/prompt"})["count"] == 1000


def test_many_series_are_sent_in_batches(settings: Settings, aws: AwsSession, monkeypatch: pytest.MonkeyPatch) -> None:
    import comfyd.backends.aws.cloudwatch as cloudwatch

    monkeypatch.setattr(cloudwatch, "MAX_DATUMS_PER_CALL", 20)
    calls = []
    aws.boto.events.register("before-call.cloudwatch.PutMetricData",
                             lambda params, **kw: calls.append(len(params["body"]) if params.get("body") else 0))
    metrics = CloudWatchMetrics(aws, "t3", background=False)
    for i in range(45):
        metrics.observe("NodeExecutionTime", 1.0, "Seconds", class_type=f"Node{i}")
    metrics.flush()
    assert len(calls) == 3  # 20 + 20 + 5 datums
    assert metrics.sent_datums == 45
    assert len(_dimension_sets(aws, "t3", "NodeExecutionTime")) == 45


def test_failed_flush_drops_instead_of_growing(fault_proxy: FaultProxy, settings: Settings) -> None:
    aws = AwsSession.from_settings(settings)
    fault_proxy.add(Fault("error", service="monitoring", status=503))
    metrics = CloudWatchMetrics(aws, "t4", background=False, retry_backoff_s=0.0)
    metrics.increment("Errors", error_type="X")
    metrics.flush()  # must not raise into the caller
    assert (metrics.sent_datums, metrics.dropped_datums) == (0, 1)
    fault_proxy.clear()
    metrics.increment("Errors", error_type="X")
    metrics.flush()
    assert metrics.sent_datums == 1


def test_units_are_checked() -> None:
    assert normalise_unit("seconds") == "Seconds"
    assert normalise_unit("ms") == "Milliseconds"
    assert normalise_unit("Count/Second") == "Count/Second"
    with pytest.raises(ValueError, match="not a CloudWatch unit"):
        normalise_unit("parsecs")
    metrics = CloudWatchMetrics(None, "t5", background=False)
    with pytest.raises(ValueError, match="empty value"):
        metrics.observe("X", 1, class_type="")


def test_lambda_writes_embedded_metric_format(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "comfyd-fn")
    metrics = build_metrics(settings)
    assert isinstance(metrics, EmfMetrics)
    out = io.StringIO()
    metrics._stream = out
    metrics.observe("NodeExecutionTime", 0.5, "Seconds", class_type="KSampler")
    metrics.observe("NodeExecutionTime", 0.5, "Seconds", class_type="KSampler")
    metrics.increment("Errors", error_type="Timeout")
    metrics.flush()
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(records) == 2
    node = next(r for r in records if "NodeExecutionTime" in r)
    assert node["NodeExecutionTime"] == [0.5, 0.5]
    assert node["class_type"] == "KSampler"
    assert node["FunctionName"] == "comfyd-fn"
    directive = node["_aws"]["CloudWatchMetrics"][0]
    assert directive == {"Namespace": "comfyd-test", "Dimensions": [["class_type"]],
                         "Metrics": [{"Name": "NodeExecutionTime", "Unit": "Seconds"}]}
    assert abs(node["_aws"]["Timestamp"] / 1000 - time.time()) < 60


def _fake_nvidia_smi(directory: Path, output: str) -> None:
    script = directory / "nvidia-smi"
    script.write_text(f"#!/bin/sh\ncat <<'OUT'\n{output}\nOUT\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)


def test_gpu_gauges_from_nvidia_smi(settings: Settings, aws: AwsSession, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_nvidia_smi(tmp_path, "0, 87, 40960, 81920\n1, [N/A], 1024, 81920")
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    samples = sample_gpus()
    assert [(s.index, s.utilization_pct, s.memory_used_bytes) for s in samples] == [
        (0, 87.0, 40960 * 1024**2), (1, None, 1024 * 1024**2)]
    metrics = CloudWatchMetrics(aws, "t6", background=False)
    assert metrics.record_gpus() == 2
    metrics.flush()
    assert _stats(aws, "t6", "GPUUtilization", {"gpu": "0"})["max"] == 87.0
    assert _stats(aws, "t6", "GPUMemoryUtilization", {"gpu": "0"})["max"] == 50.0
    assert _stats(aws, "t6", "GPUMemoryUsed", {"gpu": "1"})["max"] == 1024 * 1024**2
    assert _stats(aws, "t6", "GPUUtilization", {"gpu": "1"})["count"] == 0  # unknown is not 0


def test_no_gpu_no_gauges(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no nvidia-smi
    if "torch" in __import__("sys").modules:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    assert sample_gpus() == []
