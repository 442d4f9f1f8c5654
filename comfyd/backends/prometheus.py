"""Metrics in Prometheus' text exposition format (GET /metrics).

Metric names come in CloudWatch style ("JobDuration", unit "Seconds") so that the job layer
records one name for both backends; here they become `comfyd_job_duration_seconds`. `observe`
feeds a histogram, `increment` a counter (`_total`), `gauge` a gauge. Dimensions are labels.
"""

from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field

# Seconds-scale buckets: HTTP accept latency up to a long sampling job.
DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_UNIT_SUFFIX = {"Seconds": "seconds", "Milliseconds": "milliseconds", "Bytes": "bytes", "Percent": "percent"}
LabelKey = tuple[tuple[str, str], ...]


def metric_name(name: str, unit: str = "None", prefix: str = "comfyd") -> str:
    """"JobDuration", "Seconds" -> "comfyd_job_duration_seconds"."""
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    snake = re.sub(r"[^a-z0-9_]", "_", snake)
    suffix = _UNIT_SUFFIX.get(unit)
    if suffix and not snake.endswith(suffix):
        snake = f"{snake}_{suffix}"
    return f"{prefix}_{snake}"


def _labels(dimensions: dict[str, str]) -> LabelKey:
    return tuple(sorted((re.sub(r"[^a-zA-Z0-9_]", "_", k), str(v)) for k, v in dimensions.items()))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _render_labels(labels: LabelKey, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


@dataclass
class _Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        self.total += value
        self.count += 1
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[i] += 1


class PrometheusMetrics:
    """comfyd.engine.interfaces.Metrics kept in memory and rendered as Prometheus text."""

    def __init__(self, prefix: str = "comfyd", buckets: tuple[float, ...] = DEFAULT_BUCKETS) -> None:
        self.prefix = prefix
        self.buckets = buckets
        self._lock = threading.Lock()
        self._counters: dict[str, dict[LabelKey, float]] = {}
        self._gauges: dict[str, dict[LabelKey, float]] = {}
        self._histograms: dict[str, dict[LabelKey, _Histogram]] = {}

    def observe(self, name: str, value: float, unit: str = "None", **dimensions: str) -> None:
        key = metric_name(name, unit, self.prefix)
        with self._lock:
            series = self._histograms.setdefault(key, {})
            histogram = series.setdefault(_labels(dimensions), _Histogram(self.buckets))
            histogram.observe(float(value))

    def increment(self, name: str, value: float = 1.0, **dimensions: str) -> None:
        key = metric_name(name, "None", self.prefix) + "_total"
        with self._lock:
            series = self._counters.setdefault(key, {})
            labels = _labels(dimensions)
            series[labels] = series.get(labels, 0.0) + float(value)

    def gauge(self, name: str, value: float, unit: str = "Count", **dimensions: str) -> None:
        key = metric_name(name, unit, self.prefix)
        with self._lock:
            self._gauges.setdefault(key, {})[_labels(dimensions)] = float(value)

    def flush(self) -> None:
        """Prometheus pulls; nothing to send."""

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name in sorted(self._counters):
                lines.append(f"# TYPE {name} counter")
                for labels, value in sorted(self._counters[name].items()):
                    lines.append(f"{name}{_render_labels(labels)} {_number(value)}")
            for name in sorted(self._gauges):
                lines.append(f"# TYPE {name} gauge")
                for labels, value in sorted(self._gauges[name].items()):
                    lines.append(f"{name}{_render_labels(labels)} {_number(value)}")
            for name in sorted(self._histograms):
                lines.append(f"# TYPE {name} histogram")
                for labels, hist in sorted(self._histograms[name].items()):
                    for bound, count in zip(hist.buckets, hist.counts, strict=True):
                        lines.append(f"{name}_bucket{_render_labels(labels, (('le', _number(bound)),))} {count}")
                    lines.append(f"{name}_bucket{_render_labels(labels, (('le', '+Inf'),))} {hist.count}")
                    lines.append(f"{name}_sum{_render_labels(labels)} {_number(hist.total)}")
                    lines.append(f"{name}_count{_render_labels(labels)} {hist.count}")
        return "\n".join(lines) + "\n" if lines else ""


class NullMetrics:
    """Metrics switched off (`COMFYD_METRICS=none`)."""

    def observe(self, name: str, value: float, unit: str = "None", **dimensions: str) -> None: ...

    def increment(self, name: str, value: float = 1.0, **dimensions: str) -> None: ...

    def gauge(self, name: str, value: float, unit: str = "Count", **dimensions: str) -> None: ...

    def flush(self) -> None: ...

    def render(self) -> str:
        return ""
