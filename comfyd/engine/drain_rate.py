"""How fast the queue drains, measured: what Retry-After is based on when the queue is full."""

from __future__ import annotations

import collections
import math
import threading
import time

# The drain rate is measured over the last DRAIN_SAMPLES finished jobs within this window.
DRAIN_SAMPLES = 200
DRAIN_WINDOW_S = 300.0


class DrainMeter:
    """Finish times of the jobs this process ran, and the rate and wait they imply."""

    def __init__(self, workers: int) -> None:
        self.workers = max(1, workers)
        self._finished_at: collections.deque[float] = collections.deque(maxlen=DRAIN_SAMPLES)
        self._lock = threading.Lock()

    def finished(self) -> None:
        with self._lock:
            self._finished_at.append(time.monotonic())

    def rate(self) -> float | None:
        """Jobs finished per second over the recent window, or None without enough data."""
        with self._lock:
            times = list(self._finished_at)
        now = time.monotonic()
        times = [t for t in times if now - t <= DRAIN_WINDOW_S]
        if len(times) < 2 or times[-1] <= times[0]:
            return None
        # Measured from the first finish to now: an idle spell after a burst lowers the rate.
        return (len(times) - 1) / max(now - times[0], times[-1] - times[0])

    def retry_after_s(self, depth: int) -> int:
        """Seconds until `depth` queued jobs have drained at the measured rate; before any
        measurement, one second per job per worker."""
        rate = self.rate()
        estimate = depth // self.workers + 1 if rate is None else depth / rate
        return max(1, min(300, math.ceil(estimate)))
