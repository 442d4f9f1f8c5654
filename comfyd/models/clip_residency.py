"""Where a CLIP's text encoders live: on the compute device, or offloaded to host memory.

A large text encoder (T5-XXL, UMT5-XXL, Qwen2.5-VL, Llama) is used once per prompt and then sits
idle beside a transformer that needs the device for every step. When the model manager must make
room on the device, it moves an idle CLIP's encoders to host memory instead of dropping them
(`try_offload`), and the next encode brings them back first (`in_use`), after the manager made
room for them by the same rule. Under the after-encode policy (comfyd.models.text_encoder_offload)
the manager offloads them as soon as the last encode using them ends (`on_idle`).

Every handle onto the same encoders (LoRA and merge nodes make new handles with `replace`) shares
one residency, so one lock guards the modules: an encode counts itself in as a user, and an
offload only moves encoders nobody is using. The manager tries that lock without waiting while it
holds its own lock, and an encode takes the manager's lock while it holds this one, so the two
never wait on each other in opposite orders.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch


def move_module(module: Any, device: torch.device) -> None:
    """Move a module's parameters and buffers (in place: the Parameter objects stay the same, so
    the LoRA patcher's bookkeeping and merge sources keep pointing at them)."""
    module.to(device)


class ClipResidency:
    """The placement of one loaded CLIP's encoders. `make_room(residency)` is the manager's
    callback run before the encoders come back to `device` (it accounts them and evicts others);
    `on_idle(residency)` runs when the last encode using them ends (it may offload them)."""

    def __init__(
        self,
        key: str,
        encoders: Mapping[str, Any],
        device: torch.device,
        make_room: Callable[[ClipResidency], None] | None = None,
        on_idle: Callable[[ClipResidency], None] | None = None,
    ) -> None:
        self.key = key
        self.encoders = encoders
        self.device = device
        self.make_room = make_room
        self.on_idle = on_idle
        self.offloaded = False
        self.nbytes = 0  # bytes moved to the host by the last offload
        self._cond = threading.Condition(threading.Lock())
        self._users = 0

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """The encoders on the device, not moved until the block ends."""
        with self._cond:
            if self.offloaded:
                if self.make_room is not None:
                    self.make_room(self)
                for encoder in self.encoders.values():
                    move_module(encoder, self.device)
                self.offloaded = False
            self._users += 1
        try:
            yield
        finally:
            with self._cond:
                self._users -= 1
                idle = self._users == 0 and not self.offloaded
            # Outside this lock: the callback takes the manager's, then tries this one unwaiting.
            if idle and self.on_idle is not None:
                self.on_idle(self)

    def try_offload(self, host: torch.device, nbytes: int) -> bool:
        """Move the encoders to `host` if no encode uses them now (never waits); True if moved."""
        if not self._cond.acquire(blocking=False):
            return False
        try:
            if self._users or self.offloaded:
                return False
            for encoder in self.encoders.values():
                move_module(encoder, host)
            self.offloaded = True
            self.nbytes = nbytes
            return True
        finally:
            self._cond.release()
