"""JobBudget: model loading is left out of a job's wall-time budget, up to an allowance."""

from __future__ import annotations

import threading

from comfyd.engine.job_budget import JobBudget


def _budget(seconds: float) -> tuple[JobBudget, threading.Event, threading.Event]:
    soft, hard = threading.Event(), threading.Event()
    return JobBudget(seconds, seconds, soft.set, hard.set, "test-budget", load_allowance_s=0.1), soft, hard


def test_the_budget_fires_soft_then_hard() -> None:
    budget, soft, hard = _budget(0.05)
    assert soft.wait(5) and hard.wait(5)
    budget.cancel()


def test_a_paused_budget_does_not_fire_until_resumed() -> None:
    budget, soft, _hard = _budget(0.05)
    budget.pause()
    budget.pause()  # nested loads
    budget.resume()
    assert not soft.wait(0.02)  # still paused by the outer load (no time passes on the budget)
    budget.resume()
    assert soft.wait(5)
    budget.cancel()


def test_a_load_that_never_ends_still_times_out() -> None:
    budget, soft, hard = _budget(0.05)
    budget.pause()  # never resumed: after the load allowance the clock runs again
    assert soft.wait(5) and hard.wait(5)
    budget.cancel()


def test_a_cancelled_budget_never_fires() -> None:
    budget, soft, hard = _budget(0.05)
    budget.cancel()
    budget.resume()
    assert not soft.wait(0.2) and not hard.is_set()
