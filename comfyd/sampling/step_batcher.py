"""Cross-request batching: the sampling runs of several jobs share one network call per step.

Jobs that sample with the same network (the same loaded UNet with the same LoRA patches) at the
same latent and conditioning shapes form a group. At every model call each member hands its
network inputs (its own latent rows, timesteps, context, vector conditioning) to the group; once
every member has a call waiting, one of the waiting threads concatenates them, makes ONE network
call and splits the output back. Everything else stays per job: its sampler, sigmas, noise and
RNG, CFG, callbacks, interrupt. Each row carries its own timestep, so members need not be at the
same step, nor use the same sampler, scheduler, step count, cfg or denoise.

Semantics:
- cancel: a member that stops (interrupt, error, end of its run) leaves the group when its run
  ends; a member interrupted while its call waits leaves at once. The others go on.
- errors: when a batched call raises, each member's call is run again alone, so only the job
  whose own inputs fail gets the error.
- latency: a member's call waits at most for the round in flight (one step) and for the other
  members' current step; a member that has not called for `stall_s` is not waited for. Only the
  first call of a new group waits the gather window, and a job above the default priority
  never waits for it.
- the device: each round takes the device turn (the device gate) for its network call only, so
  other computations (text encoding, VAE, other groups) run between rounds.
- exactness: on CPU (`exact`), the batch-size-sensitive ops run per job (batch_exact), so each
  job's result is bit-identical to its run alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from comfyd.engine.errors import ExecutionInterrupted
from comfyd.sampling.batch_exact import PerJobOps

DEFAULT_PRIORITY = 1  # the job priority that waits for companions (higher ones never do)
AUTO_BATCH_MAX_ACCELERATOR = 4
_POLL_S = 0.05  # how often a waiting call looks at its job's interrupt

Turn = Callable[[], AbstractContextManager[Any]]


def batch_limit(setting: int, device_type: str) -> int:
    """`settings.batch_max`: 0 = automatic (4 jobs per call on an accelerator, off on CPU)."""
    if setting < 0:
        raise ValueError("settings.batch_max must be 0 (automatic) or a positive count")
    if setting:
        return setting
    return 1 if device_type == "cpu" else AUTO_BATCH_MAX_ACCELERATOR


@dataclass
class BatchStats:
    """Counters of one batcher (tests, the bench, /system_stats)."""

    rounds: int = 0
    network_calls: int = 0
    member_calls: int = 0  # job calls served (network_calls < member_calls when batching helps)
    largest: int = 0  # most jobs in one network call
    solo_retries: int = 0  # batched calls that failed and were run again per job


@dataclass(eq=False)
class _Call:
    member: _Member
    sample: Tensor
    timestep: Tensor
    context: Tensor
    added: dict[str, Tensor] | None
    signature: tuple[Any, ...]
    since: float
    extra: dict[str, Any] = field(default_factory=dict)  # per-row UNet extras (control residuals)
    taken: bool = False
    done: bool = False
    result: Tensor | None = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Member:
    priority: int
    interrupt: threading.Event | None
    group: _Group | None = None


@dataclass(eq=False)
class _Group:
    key: tuple[Any, ...]
    net: Callable[..., Any]
    turn: Turn | None
    window_until: float
    members: list[_Member] = field(default_factory=list)
    pending: dict[_Member, _Call] = field(default_factory=dict)
    running: bool = False
    rounds: int = 0


def _signature(
    sample: Tensor, timestep: Tensor, context: Tensor, added: dict[str, Tensor] | None,
    extra: dict[str, Any] | None = None,
) -> tuple:
    """What must match for two calls to share a network call (all but the batch size)."""
    vector = tuple(sorted((k, tuple(v.shape[1:]), v.dtype) for k, v in added.items())) if added else None
    return (tuple(sample.shape[1:]), sample.dtype, str(sample.device), timestep.dtype,
            tuple(context.shape[1:]), context.dtype, vector, _extra_layout(extra, int(sample.shape[0])))


def _extra_layout(extra: dict[str, Any] | None, rows: int) -> tuple | None:
    """The shape of a call's extra UNet inputs (ControlNet / T2I-Adapter residuals: tensors or
    sequences of tensors with one row per sample row), which calls sharing a network call must
    agree on. Anything that is not per-row gets a layout of its own, so that call runs alone."""
    if not extra:
        return None
    layout: list[tuple[Any, ...]] = []
    for key in sorted(extra):
        value = extra[key]
        tensors = list(value) if isinstance(value, list | tuple) else [value]
        if not all(isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == rows for t in tensors):
            return (object(),)  # not splittable by rows: never batched
        layout.append((key, type(value).__name__, tuple((tuple(t.shape[1:]), t.dtype) for t in tensors)))
    return tuple(layout)


def _cat_extra(part: list[_Call]) -> dict[str, Any]:
    """The calls' extra inputs joined row-wise, in call order (their layouts are equal)."""
    joined: dict[str, Any] = {}
    for key, first in part[0].extra.items():
        if isinstance(first, list | tuple):
            items = [torch.cat([c.extra[key][i] for c in part]) for i in range(len(first))]
            joined[key] = type(first)(items) if isinstance(first, tuple) else items
        else:
            joined[key] = torch.cat([c.extra[key] for c in part])
    return joined


class StepBatcher:
    """Groups the network calls of concurrent sampling runs (one per process, shared by models)."""

    def __init__(
        self,
        max_batch: int,
        window_s: float = 0.0,
        exact: bool = False,
        stall_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_batch = max(1, int(max_batch))
        self.window_s = max(0.0, float(window_s))
        self.exact = exact
        self.stall_s = stall_s
        self._clock = clock
        self._cond = threading.Condition()
        self._groups: dict[tuple[Any, ...], list[_Group]] = {}
        self.stats = BatchStats()

    @property
    def enabled(self) -> bool:
        return self.max_batch > 1

    def pending_calls(self) -> int:
        """Calls waiting for a round, over all groups."""
        with self._cond:
            return sum(len(g.pending) for groups in self._groups.values() for g in groups)

    @contextlib.contextmanager
    def session(
        self,
        net_key: Hashable,
        net: Callable[..., Any],
        turn: Turn | None = None,
        priority: int = DEFAULT_PRIORITY,
        interrupt: threading.Event | None = None,
    ) -> Iterator[BatchedNetwork]:
        """A network that batches this run's calls with other sessions of the same `net_key`
        (`turn`: the device turn each round's call is made in). Leaving ends the membership."""
        member = _Member(priority, interrupt)
        try:
            yield BatchedNetwork(self, member, net_key, net, turn)
        finally:
            self._leave(member)

    # --- membership ----------------------------------------------------------------------

    def _join(self, member: _Member, key: tuple[Any, ...], net: Callable[..., Any], turn: Turn | None) -> _Group:
        groups = self._groups.setdefault(key, [])
        for group in groups:
            if len(group.members) < self.max_batch:
                break
        else:
            # A job above the default priority never waits for companions.
            wait = self.window_s if member.priority <= DEFAULT_PRIORITY else 0.0
            group = _Group(key, net, turn, window_until=self._clock() + wait)
            groups.append(group)
        group.members.append(member)
        member.group = group
        self._cond.notify_all()
        return group

    def _leave(self, member: _Member) -> None:
        with self._cond:
            group = member.group
            if group is None:
                return
            member.group = None
            call = group.pending.pop(member, None)
            if call is not None and not call.taken:
                call.done = True
            group.members.remove(member)
            if not group.members:
                groups = self._groups.get(group.key, [])
                if group in groups:
                    groups.remove(group)
                if not groups:
                    self._groups.pop(group.key, None)
            self._cond.notify_all()

    # --- rounds --------------------------------------------------------------------------

    def _wait_s(self, group: _Group, now: float) -> float | None:
        """0 when the group's next round may run now; else how long until it may (None: when
        the missing members call)."""
        if group.running or not group.pending:
            return None
        waits: list[float] = []
        if len(group.pending) < len(group.members):
            oldest = min(c.since for c in group.pending.values())
            waits.append(oldest + self.stall_s - now)
        if (group.rounds == 0 and len(group.members) < self.max_batch
                and all(m.priority <= DEFAULT_PRIORITY for m in group.members)):
            # The gather window; a job above the default priority in the group ends it.
            waits.append(group.window_until - now)
        wait = max(waits, default=0.0)
        return max(wait, 0.0)

    def call(self, member: _Member, call: _Call) -> Tensor:
        group = member.group
        assert group is not None
        lead: list[_Call] | None = None
        with self._cond:
            group.pending[member] = call
            self._cond.notify_all()
            while not call.done:
                wait = self._wait_s(group, self._clock())
                if wait == 0.0:
                    lead = list(group.pending.values())
                    group.pending.clear()
                    group.running = True
                    for c in lead:
                        c.taken = True
                    break
                if member.interrupt is not None and member.interrupt.is_set() and not call.taken:
                    group.pending.pop(member, None)
                    self._cond.notify_all()
                    raise ExecutionInterrupted("sampling interrupted")
                self._cond.wait(_POLL_S if wait is None else min(wait, _POLL_S))
        if lead is not None:
            try:
                self._run_round(group, lead)
            finally:
                with self._cond:
                    group.running = False
                    group.rounds += 1
                    for c in lead:
                        c.done = True
                    self._cond.notify_all()
        if call.error is not None:
            raise call.error
        assert call.result is not None
        return call.result

    def _run_round(self, group: _Group, calls: list[_Call]) -> None:
        parts: dict[tuple[Any, ...], list[_Call]] = {}
        for c in calls:
            parts.setdefault(c.signature, []).append(c)
        turn = group.turn() if group.turn is not None else contextlib.nullcontext()
        try:
            with turn:
                for part in parts.values():
                    self._run_part(group.net, part)
        except BaseException as exc:  # the turn itself failed: every call gets the error
            for c in calls:
                if c.result is None and c.error is None:
                    c.error = exc
        with self._cond:
            self.stats.rounds += 1

    def _run_part(self, net: Callable[..., Any], part: list[_Call]) -> None:
        if len(part) == 1:
            self._run_alone(net, part[0])
            self._count(1, 1)
            return
        sizes = [int(c.sample.shape[0]) for c in part]
        first = part[0]
        added = None
        if first.added is not None:
            added = {k: torch.cat([c.added[k] for c in part]) for k in first.added}  # type: ignore[index]
        mode = PerJobOps(sizes) if self.exact else contextlib.nullcontext()
        try:
            with mode:
                out = net(
                    torch.cat([c.sample for c in part]),
                    torch.cat([c.timestep for c in part]),
                    encoder_hidden_states=torch.cat([c.context for c in part]),
                    added_cond_kwargs=added,
                    return_dict=False,
                    **_cat_extra(part),
                )[0]
        except Exception:
            # Per-job errors: run each call alone, so only the job whose inputs fail sees it.
            with self._cond:
                self.stats.solo_retries += 1
            for c in part:
                self._run_alone(net, c)
            self._count(len(part) + 1, len(part))
            return
        for c, piece in zip(part, out.split(sizes), strict=True):
            c.result = piece
        self._count(1, len(part))

    def _run_alone(self, net: Callable[..., Any], c: _Call) -> None:
        try:
            c.result = net(c.sample, c.timestep, encoder_hidden_states=c.context,
                           added_cond_kwargs=c.added, return_dict=False, **c.extra)[0]
        except Exception as exc:
            c.error = exc

    def _count(self, network_calls: int, members: int) -> None:
        with self._cond:
            self.stats.network_calls += network_calls
            self.stats.member_calls += members
            self.stats.largest = max(self.stats.largest, members)


class BatchedNetwork:
    """Called like the network (a diffusers UNet); batches its calls through the StepBatcher."""

    def __init__(
        self, batcher: StepBatcher, member: _Member, net_key: Hashable, net: Callable[..., Any], turn: Turn | None
    ) -> None:
        self._batcher = batcher
        self._member = member
        self._net_key = net_key
        self._net = net
        self._turn = turn
        # The sampler reads the UNet's layout (where control residuals go) from its config.
        self.config = getattr(net, "config", None)
        self.exact_context_batches = bool(getattr(net, "exact_context_batches", False))

    def __call__(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        added_cond_kwargs: dict[str, Tensor] | None = None,
        return_dict: bool = False,
        **extra: Any,
    ) -> tuple[Tensor]:
        signature = _signature(sample, timestep, encoder_hidden_states, added_cond_kwargs, extra)
        batcher = self._batcher
        with batcher._cond:
            if self._member.group is None:
                batcher._join(self._member, (self._net_key, signature), self._net, self._turn)
            now = batcher._clock()
        call = _Call(self._member, sample, timestep.expand(sample.shape[0]), encoder_hidden_states,
                     added_cond_kwargs, signature, now, extra)
        return (batcher.call(self._member, call),)


def lend_network(
    model: Any, priority: int = DEFAULT_PRIORITY, interrupt: threading.Event | None = None
) -> AbstractContextManager[Any]:
    """The network to sample with: through the model's step batcher when it has one that is on
    (`model.batcher`, `model.batch_key`, `model.device_turn()`, `model.patched(gate=False)`),
    otherwise `model.patched()` as it is."""
    batcher = getattr(model, "batcher", None)
    if not isinstance(batcher, StepBatcher) or not batcher.enabled:
        return model.patched()
    if getattr(model, "unet_hooks", ()):
        # UNet hooks (FreeU, SAG's attention capture) see a whole network call; kept per job.
        return model.patched()
    return _batched(model, batcher, priority, interrupt)


@contextlib.contextmanager
def _batched(model: Any, batcher: StepBatcher, priority: int, interrupt: threading.Event | None) -> Iterator[Any]:
    # The run holds the shared weights (LoRA patches) but not the device: each round takes the
    # device turn for its network call only.
    with model.patched(gate=False) as net, batcher.session(
        model.batch_key, net, turn=model.device_turn, priority=priority, interrupt=interrupt
    ) as batched:
        yield batched
