"""The job layer, one concept per module; this module gathers their public names.

- `job_runtime`: what running a job needs (`JobRuntime`, `JobBackends`);
- `job_run`: run ONE job end to end (`run_job`, `JobControl`, `JobOutcome`);
- `job_events`: what a running job tells listeners, the notifier and metrics;
- `job_outputs`: a finished job's files through the OutputStore;
- `job_manager`: the in-process scheduler (`JobManager`: slots, queue, recovery).

Every state change is written to the `JobStore` before it is announced, so a process killed at
any point can be recovered from the store (and queue) alone.
"""

from __future__ import annotations

from comfyd.engine.job_events import HISTORY_EVENTS, TERMINAL_EVENTS
from comfyd.engine.job_manager import JobEventListener, JobManager, QueueFullError, SubmitResult
from comfyd.engine.job_run import JobControl, JobOutcome, cancel_unstarted, hard_timeout_grace_s, run_job
from comfyd.engine.job_runtime import EventListener, JobBackends, JobRuntime, WorkflowExecutor

__all__ = [
    "HISTORY_EVENTS",
    "TERMINAL_EVENTS",
    "EventListener",
    "JobBackends",
    "JobControl",
    "JobEventListener",
    "JobManager",
    "JobOutcome",
    "JobRuntime",
    "QueueFullError",
    "SubmitResult",
    "WorkflowExecutor",
    "cancel_unstarted",
    "hard_timeout_grace_s",
    "run_job",
]
