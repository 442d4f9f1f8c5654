"""Interrupt checks inside long model computations (text encoding, VAE decoding).

Sampling checks its job's interrupt flag every step; a text encoder over hundreds of prompt
chunks or a VAE decoding a batch of large images runs for many seconds in one call. A node sets
the check for the computations it starts (`interruptible(ctx.check_interrupted)`), and the
computations call `check_interrupt()` between layers (text encoder) or blocks (VAE decoder,
through forward pre-hooks). The check is per thread, so jobs sharing one loaded module never see
each other's interrupts, and the hooks change no arithmetic.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

_local = threading.local()
_HOOKED_ATTR = "_comfyd_interrupt_hooks"


@contextlib.contextmanager
def interruptible(check: Callable[[], None] | None) -> Iterator[None]:
    """Run the block with `check` as this thread's interrupt check (it raises to stop)."""
    previous = getattr(_local, "check", None)
    _local.check = check
    try:
        yield
    finally:
        _local.check = previous


def check_interrupt() -> None:
    """Call this thread's interrupt check, if a node set one."""
    check = getattr(_local, "check", None)
    if check is not None:
        check()


def install_hooks(module: Any) -> None:
    """Check for an interrupt before every submodule of `module` runs (installed once)."""
    if getattr(module, _HOOKED_ATTR, False):
        return
    for sub in module.modules():
        sub.register_forward_pre_hook(lambda _m, _args: check_interrupt())
    setattr(module, _HOOKED_ATTR, True)
