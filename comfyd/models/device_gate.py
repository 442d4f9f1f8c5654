"""How many model computations may run at once on one device.

Up to `max_concurrent_jobs` jobs run at a time, and they share the loaded models. On a GPU,
letting three samplers interleave gains little throughput and triples activation memory (three
SDXL samplings at 1024² can exhaust a 24 GB card), so by default one computation at a time holds
the device: the other running jobs meanwhile load models, encode PNGs and upload outputs. On a CPU
the cores are shared either way, so there is no limit unless one is set.

The gate is entered around a UNet sampling run, a text encoding and a VAE encode/decode (see
`comfyd.models.handles`). It is re-entrant per thread, so a computation that calls another one
cannot deadlock on itself. Order with the LoRA patcher: gate first, then patches, everywhere.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch


def gate_limit(setting: int, device: torch.device) -> int:
    """`settings.device_concurrency`: 0 = automatic (1 on CUDA and MPS, no limit on CPU)."""
    if setting < 0:
        raise ValueError("settings.device_concurrency must be 0 (automatic) or a positive count")
    if setting:
        return setting
    return 0 if device.type == "cpu" else 1


class DeviceGate:
    """At most `limit` holders at a time (0 = unlimited); re-entrant within a thread."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit) if limit > 0 else None
        self._depth = threading.local()
        self._lock = threading.Lock()
        self._holders = 0
        self.peak_holders = 0  # the most computations seen at once (for tests and /system_stats)

    @contextmanager
    def held(self) -> Iterator[None]:
        depth = getattr(self._depth, "value", 0)
        if depth == 0 and self._slots is not None:
            self._slots.acquire()
        self._depth.value = depth + 1
        if depth == 0:
            with self._lock:
                self._holders += 1
                self.peak_holders = max(self.peak_holders, self._holders)
        try:
            yield
        finally:
            self._depth.value = depth
            if depth == 0:
                with self._lock:
                    self._holders -= 1
                if self._slots is not None:
                    self._slots.release()
