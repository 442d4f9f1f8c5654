"""Metrics on CloudWatch: buffered in memory, sent with PutMetricData off the request path.

`observe`, `increment` and `gauge` only touch an in-memory buffer under a lock (microseconds);
a background thread flushes it every `flush_interval_s` in batches (values of one metric and
dimension set are sent as one datum with Values/Counts, so a busy server sends a handful of
datums per minute, not one per request). The same thread samples the GPUs, when there are any,
into GPUUtilization / GPUMemoryUsed / GPUMemoryUtilization (dimension `gpu`).

Inside AWS Lambda (AWS_LAMBDA_FUNCTION_NAME is set) a background thread would be frozen between
invocations, so `EmfMetrics` prints the CloudWatch embedded metric format to stdout on `flush()`
instead, and the Lambda handler calls `flush()` before returning; CloudWatch Logs turns those
lines into metrics with no API call.

Metric names used by comfyd (docs/aws.md has the table): RequestLatency (Seconds), Errors (Count,
dimension error_type: 5xx and job errors), ClientErrors (Count, dimension status: 4xx),
JobsSubmitted, QueueWait (Seconds), JobDuration, JobsCompleted, NodeExecutionTime (Seconds,
dimension class_type), QueueDepth, JobsInFlight (Count), plus the GPU ones above.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, TextIO

from comfyd.backends.aws.retry import with_backoff
from comfyd.backends.aws.session import AwsSession

log = logging.getLogger(__name__)

MAX_DATUMS_PER_CALL = 1000  # PutMetricData's limit (and 1 MB per request)
MAX_VALUES_PER_DATUM = 150
MAX_DIMENSIONS = 30
EMF_MAX_VALUES = 100
UNITS = frozenset({
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes",
    "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second",
    "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second",
    "Kilobits/Second", "Megabits/Second", "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
})
_UNIT_ALIASES = {"s": "Seconds", "sec": "Seconds", "ms": "Milliseconds", "us": "Microseconds", "b": "Bytes",
                 "%": "Percent", "": "None"}

Dimensions = tuple[tuple[str, str], ...]
MetricKey = tuple[str, str, Dimensions]  # name, unit, sorted dimensions


def normalise_unit(unit: str) -> str:
    if unit in UNITS:
        return unit
    text = unit.strip()
    alias = _UNIT_ALIASES.get(text.lower())
    if alias:
        return alias
    for known in UNITS:
        if known.lower() == text.lower():
            return known
    raise ValueError(f"metric unit {unit!r} is not a CloudWatch unit (e.g. Seconds, Milliseconds, Bytes, Count, Percent)")


def _key(name: str, unit: str, dimensions: dict[str, str]) -> MetricKey:
    if not name or len(name) > 255:
        raise ValueError(f"metric name {name!r} must be 1..255 characters")
    if len(dimensions) > MAX_DIMENSIONS:
        raise ValueError(f"metric {name}: {len(dimensions)} dimensions, CloudWatch allows {MAX_DIMENSIONS}")
    dims = []
    for dim, value in sorted(dimensions.items()):
        text = str(value)
        if not text:
            raise ValueError(f"metric {name}: dimension {dim!r} has an empty value")
        dims.append((dim, text[:1024]))
    return name, normalise_unit(unit), tuple(dims)


@dataclass
class GpuSample:
    index: int
    utilization_pct: float | None
    memory_used_bytes: float
    memory_total_bytes: float


def sample_gpus() -> list[GpuSample]:
    """Utilisation and memory of each NVIDIA GPU (nvidia-smi), or torch's view of memory; [] without GPUs."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=index,utilization.gpu,memory.used,memory.total", "--format=csv,noheader,nounits"],
                capture_output=True, text=True, timeout=10, check=True,
            ).stdout
            samples = []
            for line in out.strip().splitlines():
                index, util, used, total = (part.strip() for part in line.split(","))
                samples.append(GpuSample(int(index), _number(util), float(used) * 1024**2, float(total) * 1024**2))
            return samples
        except (OSError, subprocess.SubprocessError, ValueError) as exc:
            log.debug("nvidia-smi gave no usable sample: %s", exc)
    torch = sys.modules.get("torch")  # only if the process already loaded it: never import torch here
    if torch is not None and torch.cuda.is_available():
        samples = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            samples.append(GpuSample(index, None, float(total - free), float(total)))
        return samples
    return []


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]" on some GPUs


class _Buffer:
    """What was recorded since the last flush."""

    def __init__(self) -> None:
        self.observations: dict[MetricKey, Counter[float]] = {}
        self.counters: Counter[MetricKey] = Counter()
        self.gauges: dict[MetricKey, float] = {}

    def __bool__(self) -> bool:
        return bool(self.observations or self.counters or self.gauges)

    def series(self) -> list[tuple[MetricKey, list[float], list[float]]]:
        """(key, values, counts) for every series, counters and gauges as one value each."""
        out: list[tuple[MetricKey, list[float], list[float]]] = []
        for key, histogram in self.observations.items():
            items = list(histogram.items())
            for start in range(0, len(items), MAX_VALUES_PER_DATUM):
                chunk = items[start : start + MAX_VALUES_PER_DATUM]
                out.append((key, [v for v, _ in chunk], [float(c) for _, c in chunk]))
        for key, total in self.counters.items():
            out.append((key, [float(total)], [1.0]))
        for key, value in self.gauges.items():
            out.append((key, [float(value)], [1.0]))
        return out


class CloudWatchMetrics:
    """Metrics for CloudWatch through PutMetricData, flushed by a background thread."""

    def __init__(
        self,
        aws: AwsSession | None,
        namespace: str = "comfyd",
        *,
        flush_interval_s: float = 10.0,
        sample_gpu: bool = True,
        background: bool = True,
        retry_attempts: int = 2,
        retry_backoff_s: float = 1.0,
    ) -> None:
        if not namespace or namespace.startswith("AWS/"):
            raise ValueError(f"COMFYD_CLOUDWATCH_NAMESPACE={namespace!r}: must be non-empty and not start with AWS/")
        self.aws = aws
        # Created now, not in the flush thread: the client is fixed when the backends are built.
        self._cloudwatch = aws.client("cloudwatch") if aws is not None else None
        self.namespace = namespace
        self.flush_interval_s = flush_interval_s
        self.sample_gpu = sample_gpu
        self.retry_attempts = retry_attempts
        self.retry_backoff_s = retry_backoff_s
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()  # one flush at a time keeps batches in order
        self._buffer = _Buffer()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent_datums = 0
        self.dropped_datums = 0
        if background:
            self._thread = threading.Thread(target=self._run, name="cloudwatch-metrics", daemon=True)
            self._thread.start()

    # --- Metrics -------------------------------------------------------------------------
    def observe(self, name: str, value: float, unit: str = "None", **dimensions: str) -> None:
        key = _key(name, unit, dimensions)
        with self._lock:
            self._buffer.observations.setdefault(key, Counter())[float(value)] += 1

    def increment(self, name: str, value: float = 1.0, **dimensions: str) -> None:
        key = _key(name, "Count", dimensions)
        with self._lock:
            self._buffer.counters[key] += value

    def gauge(self, name: str, value: float, unit: str = "Count", **dimensions: str) -> None:
        key = _key(name, unit, dimensions)
        with self._lock:
            self._buffer.gauges[key] = float(value)

    def render(self) -> str:
        return ""  # nothing to scrape: CloudWatch is pushed to

    def flush(self) -> None:
        with self._send_lock:
            with self._lock:
                buffer, self._buffer = self._buffer, _Buffer()
            if buffer:
                self._send(buffer.series(), time.time())

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.flush_interval_s + 5)
        self.flush()

    # --- sending -------------------------------------------------------------------------
    def record_gpus(self) -> int:
        """Gauge each GPU's utilisation and memory; the number of GPUs seen."""
        samples = sample_gpus()
        for gpu in samples:
            index = str(gpu.index)
            if gpu.utilization_pct is not None:
                self.gauge("GPUUtilization", gpu.utilization_pct, "Percent", gpu=index)
            self.gauge("GPUMemoryUsed", gpu.memory_used_bytes, "Bytes", gpu=index)
            if gpu.memory_total_bytes:
                self.gauge("GPUMemoryUtilization", 100.0 * gpu.memory_used_bytes / gpu.memory_total_bytes,
                           "Percent", gpu=index)
        return len(samples)

    def _run(self) -> None:
        while not self._stop.wait(self.flush_interval_s):
            try:
                if self.sample_gpu and not self.record_gpus():
                    self.sample_gpu = False  # no GPU now means none later: stop asking
                self.flush()
            except Exception:  # the metrics thread must outlive any one bad flush
                log.exception("metrics flush failed")

    def _send(self, series: list[tuple[MetricKey, list[float], list[float]]], now: float) -> None:
        cloudwatch = self._cloudwatch
        data = [
            {
                "MetricName": name, "Unit": unit, "Timestamp": now, "Values": values, "Counts": counts,
                "Dimensions": [{"Name": k, "Value": v} for k, v in dims],
            }
            for (name, unit, dims), values, counts in series
        ]
        for start in range(0, len(data), MAX_DATUMS_PER_CALL):
            batch = data[start : start + MAX_DATUMS_PER_CALL]
            try:
                with_backoff(lambda b=batch: cloudwatch.put_metric_data(Namespace=self.namespace, MetricData=b),
                             attempts=self.retry_attempts, base_s=self.retry_backoff_s, what="PutMetricData")
                self.sent_datums += len(batch)
            except Exception as exc:
                # Metrics are worth less than memory: drop the batch rather than grow without bound.
                self.dropped_datums += len(batch)
                log.warning("dropped %d CloudWatch datums: %s", len(batch), exc)


class EmfMetrics(CloudWatchMetrics):
    """CloudWatch embedded metric format on stdout, for AWS Lambda. `flush()` writes; no thread."""

    def __init__(self, namespace: str = "comfyd", *, stream: TextIO | None = None, **service: str) -> None:
        super().__init__(None, namespace, background=False, sample_gpu=False)
        self._stream = stream
        self._service = service  # properties added to every record, e.g. function name

    def _send(self, series: list[tuple[MetricKey, list[float], list[float]]], now: float) -> None:
        stream = self._stream or sys.stdout
        for (name, unit, dims), values, counts in series:
            # EMF has no counts: repeat values (bounded), which is what CloudWatch would store.
            expanded: list[float] = []
            for value, count in zip(values, counts, strict=True):
                expanded.extend([value] * int(count))
            for start in range(0, len(expanded), EMF_MAX_VALUES):
                record: dict[str, Any] = {
                    "_aws": {
                        "Timestamp": int(now * 1000),
                        "CloudWatchMetrics": [{
                            "Namespace": self.namespace,
                            "Dimensions": [[k for k, _ in dims]],
                            "Metrics": [{"Name": name, "Unit": unit}],
                        }],
                    },
                    **self._service,
                    **dict(dims),
                    name: expanded[start : start + EMF_MAX_VALUES],
                }
                stream.write(json.dumps(record, separators=(",", ":")) + "\n")
                self.sent_datums += 1
        stream.flush()


def in_lambda() -> bool:
    return bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
