"""How many model computations may run at once on one device.

Up to `max_concurrent_jobs` jobs run at a time, and they share the loaded models. On a GPU,
letting three samplers interleave gains little throughput and triples activation memory (three
SDXL samplings at 1024² can exhaust a 24 GB card), so by default one computation at a time holds
the device: the other running jobs meanwhile load models, encode PNGs and upload outputs. On a CPU
the cores are shared either way, so there is no limit unless one is set.

The gate is entered around a UNet sampling run, a text encoding and a VAE encode/decode (see
`comfyd.models.handles`). It is re-entrant per thread, so a computation that calls another one
cannot deadlock on itself. Order with the LoRA patcher: gate first, then patches, everywhere.

On the CPU the gate also sets the torch threads of the computing thread as it enters
(`threads_for(computations now running)`, comfyd.models.threads): a server's lone job computes on
every usable core instead of the share it would get if all `max_concurrent_jobs` ran, and a job
that starts beside others takes only its share. torch keeps the count per thread (OpenMP), so a
computation already running keeps the count it started with.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
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
    """At most `limit` holders at a time (0 = unlimited); re-entrant within a thread.
    `threads_for`: holders at once -> torch threads for the thread entering (None: leave them)."""

    def __init__(self, limit: int, threads_for: Callable[[int], int] | None = None) -> None:
        self.limit = limit
        self.threads_for = threads_for
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
                holders = self._holders
            if self.threads_for is not None:
                threads = self.threads_for(holders)
                if torch.get_num_threads() != threads:
                    torch.set_num_threads(threads)
        try:
            yield
        finally:
            self._depth.value = depth
            if depth == 0:
                with self._lock:
                    self._holders -= 1
                if self._slots is not None:
                    self._slots.release()
