"""How many threads torch computes with on CPU.

torch starts with one intra-op thread per core it sees, for every thread that computes. comfyd
computes from several threads at once (parallel nodes, concurrent jobs), and in a container the
cores torch sees can be more than the CPU quota allows; either way the OpenMP threads outnumber
the cores, and their barriers then wait on threads the scheduler has parked: small models
sample ten times slower or worse (bench/cpu_threads.py measures it). The automatic setting gives
each job that may compute at once its share of the usable CPUs.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use: its affinity mask, bounded by a cgroup v2/v1 CPU quota."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota(root: Path) -> float | None:
    try:
        text = (root / "cpu.max").read_text().split()
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
    except (OSError, ValueError, IndexError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        if quota > 0 and period > 0:
            return quota / period
    except (OSError, ValueError):
        pass
    return None


def auto_cpu_threads(cpus: int, concurrent_jobs: int) -> int:
    """Each job that may compute at once gets an equal share of the CPUs, at least one."""
    return max(1, cpus // max(1, concurrent_jobs))


def cpu_threads_for(settings: object, concurrent_jobs: int, cpus: int | None = None) -> int:
    """The thread count for these settings: `cpu_threads` when set, else the automatic one."""
    explicit = int(getattr(settings, "cpu_threads", 0) or 0)
    if explicit > 0:
        return explicit
    return auto_cpu_threads(usable_cpus() if cpus is None else cpus, concurrent_jobs)


def configure_cpu_threads(settings: object, concurrent_jobs: int = 1) -> int | None:
    """Set torch's intra-op threads when the models compute on the CPU; returns the count set
    (None when the device is not the CPU)."""
    import torch

    from comfyd.models.devices import choose_device

    if choose_device(str(getattr(settings, "device", "auto"))).type != "cpu":
        return None
    threads = cpu_threads_for(settings, concurrent_jobs)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
        log.debug("torch CPU threads: %d", threads)
    return threads


def cpu_threads_by_load(settings: object, device: object) -> Callable[[int], int] | None:
    """For the device gate: computations running at once -> threads for the one starting, when
    the models compute on the CPU with the automatic thread count (None otherwise: an explicit
    `cpu_threads` is kept as set, and an accelerator's threads are not the bottleneck)."""
    if getattr(device, "type", None) != "cpu" or int(getattr(settings, "cpu_threads", 0) or 0) > 0:
        return None
    cpus = usable_cpus()
    return lambda running: auto_cpu_threads(cpus, running)
