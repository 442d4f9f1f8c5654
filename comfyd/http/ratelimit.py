"""Per-caller rate limit: a token bucket of `rate_limit_per_minute` tokens, refilled evenly.

It guards the routes that create work (POST /prompt, /predictions, /v1/generate, uploads);
reads (queue, history, view, websocket) are not limited, since ComfyUI's UI polls them freely.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int, max_callers: int = 100_000) -> None:
        self.per_minute = per_minute
        self.capacity = float(per_minute)
        self.refill_per_s = per_minute / 60.0
        self.max_callers = max_callers
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def acquire(self, caller: str) -> float | None:
        """Take one token; None if allowed, else the seconds until a token is available."""
        if not self.enabled:
            return None
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(caller)
            if bucket is None:
                if len(self._buckets) >= self.max_callers:
                    self._prune(now)
                bucket = self._buckets[caller] = _Bucket(self.capacity, now)
            bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.refill_per_s)
            bucket.updated = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return None
            return (1.0 - bucket.tokens) / self.refill_per_s

    def blocked(self, caller: str) -> float | None:
        """Seconds until `caller` has a token again, without taking one; None if it has one."""
        if not self.enabled:
            return None
        now = time.monotonic()
        with self._lock:
            bucket = self._buckets.get(caller)
            if bucket is None:
                return None
            tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.refill_per_s)
            return None if tokens >= 1.0 else (1.0 - tokens) / self.refill_per_s

    def _prune(self, now: float) -> None:
        """Forget callers whose bucket is full again (they would start full anyway)."""
        full_after = self.capacity / self.refill_per_s
        for caller in [c for c, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[caller]


def retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
