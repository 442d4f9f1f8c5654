"""When a loaded CLIP's text encoders leave the device for host memory, and how the model manager
accounts the move (`COMFYD_TEXT_ENCODER_OFFLOAD`).

A large text encoder (T5-XXL, UMT5-XXL, Qwen2.5-VL, Llama) is used once per prompt and then sits
idle beside a transformer that needs the device for every step. The policies:

- `after_encode`: once no encode uses a CLIP any more, its encoders move to host memory (where the
  host budget has room), and come back for the next encode; also `on_pressure`'s moves.
- `on_pressure`: they move only when the device budget must make room for another model, instead
  of being dropped.
- `never`: they stay on the device; making room drops them as any model.
- `auto` (the default): `after_encode` for a CLIP whose encoders take at least `LARGE_SHARE` of the
  device budget (T5-XXL beside Flux on a 24 GB GPU: ~9.5 GB of a 19 GB budget), `on_pressure`
  for the others (CLIP-L, SDXL's pair on a large GPU), whose round trip would cost more than the
  room it frees.

On a host without an accelerator nothing moves: the device is the host.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

from comfyd.models.clip_residency import ClipResidency
from comfyd.models.handles import ClipHandle

if TYPE_CHECKING:
    from comfyd.models.manager import ModelManager as _Base
    from comfyd.models.manager import _Entry
else:
    _Base = object

log = logging.getLogger(__name__)

OffloadPolicy = Literal["auto", "after_encode", "on_pressure", "never"]
OFFLOAD_POLICIES: tuple[str, ...] = ("auto", "after_encode", "on_pressure", "never")
# auto: encoders at least this share of the device budget are offloaded after every encode.
LARGE_SHARE = 0.25


def offloads_after_encode(policy: str, encoder_bytes: int, device_budget: int) -> bool:
    """Whether a CLIP of `encoder_bytes` on the device goes to the host once its encode ends."""
    if policy == "after_encode":
        return True
    if policy == "auto":
        return device_budget > 0 and encoder_bytes >= LARGE_SHARE * device_budget
    return False


def offloads_on_pressure(policy: str) -> bool:
    """Whether a CLIP that must make room goes to the host (else it is dropped)."""
    return policy != "never"


class TextEncoderOffload(_Base):
    """The model manager's moves of idle CLIPs to host memory and back; a mixin of
    `manager.ModelManager`, which provides the LRU entries, their lock, budgets and counters."""

    @property
    def offload_policy(self) -> str:
        return str(getattr(self.settings, "text_encoder_offload", "auto"))

    def _clip_residency(self, key: str, encoders: dict[str, Any]) -> ClipResidency:
        return ClipResidency(key, encoders, self.plan.device, self._clip_returning, self._clip_idle)

    @staticmethod
    def _residency(value: Any) -> ClipResidency | None:
        clip = value[1] if isinstance(value, tuple) and len(value) == 3 else value
        return clip.residency if isinstance(clip, ClipHandle) else None

    def _clip_device_bytes(self, residency: ClipResidency) -> int:
        from comfyd.models.manager import module_bytes

        return module_bytes(*residency.encoders.values(), host=self.host_device)[0]

    def _move_clip_to_host(self, entry: _Entry, residency: ClipResidency, size: int) -> bool:
        """Offload the entry's CLIP if no encode uses it now (caller holds the manager's lock)."""
        if not residency.try_offload(self.host_device, size):
            return False
        entry.device_bytes -= size
        entry.host_bytes += size
        self._counters["offloads"] += 1
        log.info("offloaded the text encoders of %s %s to host memory", entry.kind, entry.name)
        return True

    def _offload_clip(self, entry: _Entry, device_excess: int, host_room: int) -> bool:
        """Move the entry's idle CLIP to the host instead of dropping the entry, where that makes
        the room (a checkpoint's other models stay: offloading only its CLIP must suffice)."""
        residency = self._residency(entry.value)
        if residency is None or residency.offloaded or self.plan.device.type == self.host_device.type:
            return False
        if not offloads_on_pressure(self.offload_policy):
            return False
        size = self._clip_device_bytes(residency)
        if size == 0 or size > host_room or (size < entry.device_bytes and size < device_excess):
            return False
        return self._move_clip_to_host(entry, residency, size)  # False: an encode is using it

    def _clip_idle(self, residency: ClipResidency) -> None:
        """An encode finished and nothing else uses the CLIP: offload it now where the policy
        says so and the host budget has room (else it stays, and may go on pressure later)."""
        if self.plan.device.type == self.host_device.type:
            return
        with self._lock:
            entry = self._entries.get(residency.key)
            if entry is None or self._residency(entry.value) is not residency or residency.offloaded:
                return
            size = self._clip_device_bytes(residency)
            if size == 0 or not offloads_after_encode(self.offload_policy, size, self.device_budget):
                return
            host_used = sum(e.host_bytes for e in self._entries.values())
            if host_used + size > self.host_budget:
                return
            if self._move_clip_to_host(entry, residency, size):
                self._counters["offloads_after_encode"] += 1

    def _clip_returning(self, residency: ClipResidency) -> None:
        """An offloaded CLIP is about to move back to the device: account it there and make
        room for it (its residency's lock is held, so it is not offloaded again meanwhile)."""
        with self._lock:
            entry = self._entries.get(residency.key)
            if entry is None or self._residency(entry.value) is not residency:
                return  # dropped from the cache since: a job still holds it, untracked as any such
            entry.device_bytes += residency.nbytes
            entry.host_bytes -= residency.nbytes
            self._entries.move_to_end(entry.key)
            self._counters["returns"] += 1
            evicted = self._evict_over_budget(protect=entry.key)
        if evicted:
            self._release_memory()
