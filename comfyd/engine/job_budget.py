"""A job's wall-time budget: soft then hard deadline, paused while the job loads a model.

The soft deadline interrupts the job; the hard one (a grace period later) ends it in the store
even if it hangs. Time spent loading a model does not count (loading is shared, and the first
job after a start would otherwise time out on a cold model), but at most `load_allowance_s`
of it (by default the larger of the budget and `LOAD_ALLOWANCE_S`): a load that hangs still
ends in a timeout.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

LOAD_ALLOWANCE_S = 600.0


class JobBudget:
    def __init__(self, budget_s: float, grace_s: float, soft: Callable[[], None], hard: Callable[[], None],
                 name: str, load_allowance_s: float | None = None) -> None:
        self._lock = threading.Lock()
        self._left = {"soft": budget_s, "hard": budget_s + grace_s}  # seconds left per deadline
        self._actions = {"soft": soft, "hard": hard}
        self._timers: list[threading.Timer] = []
        self._armed_at = 0.0
        self._paused = 0
        self._paused_at = 0.0
        # Loading time that may still be left out of the budget.
        self._allowance = max(budget_s, LOAD_ALLOWANCE_S) if load_allowance_s is None else load_allowance_s
        self._done = False
        self._name = name
        with self._lock:  # a deadline that fires at once must not change `_left` mid-arming
            self._arm()

    def _timer(self, seconds: float, action: Callable[..., None], *args: object) -> None:
        timer = threading.Timer(max(0.0, seconds), action, args=args)
        timer.daemon = True
        timer.name = self._name
        self._timers.append(timer)
        timer.start()

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def _arm(self) -> None:
        """Start a timer per deadline left; the caller holds the lock."""
        self._armed_at = time.monotonic()
        for key, left in list(self._left.items()):
            self._timer(left, self._fire, key)

    def _fire(self, key: str) -> None:
        with self._lock:
            if self._done or self._paused or key not in self._left:
                return
            del self._left[key]
        self._actions[key]()

    def pause(self) -> None:
        """A model load starts (calls nest: loads in parallel branches)."""
        with self._lock:
            if self._done or self._allowance <= 0:
                return
            self._paused += 1
            if self._paused > 1:
                return
            now = time.monotonic()
            self._cancel_timers()
            for key in self._left:
                self._left[key] = max(0.0, self._left[key] - (now - self._armed_at))
            self._paused_at = now
            self._timer(self._allowance, self._end_pause, True)

    def resume(self) -> None:
        """A model load ends."""
        with self._lock:
            if self._paused == 0:
                return
            self._paused -= 1
            last = self._paused == 0
        if last:
            self._end_pause(False)

    def _end_pause(self, forced: bool) -> None:
        with self._lock:
            if self._done or (self._paused and not forced) or (forced and not self._paused):
                return
            self._paused = 0
            self._allowance = 0.0 if forced else self._allowance - (time.monotonic() - self._paused_at)
            self._cancel_timers()
            self._arm()

    def loading(self, active: bool) -> None:
        if active:
            self.pause()
        else:
            self.resume()

    def cancel(self) -> None:
        with self._lock:
            self._done = True
            self._cancel_timers()
