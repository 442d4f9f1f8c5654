"""Exceptions the engine raises or understands."""

from __future__ import annotations

from typing import Any


class ComfydError(Exception):
    """Base class of comfyd's own errors."""


class WorkflowParseError(ComfydError):
    """The request body is not a workflow in either accepted form."""

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        return {
            "error": {"type": "invalid_prompt", "message": self.message, "details": self.details, "extra_info": {}},
            "node_errors": {},
        }


class WorkflowValidationError(ComfydError):
    """Validation failed; `body` is ComfyUI's /prompt 400 body ({error, node_errors})."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", {}).get("message", "invalid workflow"))
        self.body = body


class ExecutionInterrupted(ComfydError):
    """Raised inside a node when the job's interrupt flag is set."""


class NodeExecutionError(ComfydError):
    """A node raised; carries the node id and class for the execution_error event."""

    def __init__(self, node_id: str, class_type: str, original: BaseException, traceback_lines: list[str]):
        super().__init__(f"{class_type} (node {node_id}): {type(original).__name__}: {original}")
        self.node_id = node_id
        self.class_type = class_type
        self.original = original
        self.traceback_lines = traceback_lines


class RetryableError(ComfydError):
    """An error worth trying the whole job again for (device lost, storage throttled)."""


class OutputsPendingError(RetryableError):
    """The job's outputs are rendered and kept (an output store's local spool) but not stored
    yet. `keys` are the storage keys of all of them: a retry of the job waits for those instead
    of rendering again (comfyd.engine.job_run)."""

    def __init__(self, message: str, keys: list[str] | None = None) -> None:
        super().__init__(message)
        self.keys = list(keys or [])


def is_retryable(exc: BaseException) -> bool:
    """Out of memory, a lost device and throttled storage are retried; workflow errors are not."""
    original = exc.original if isinstance(exc, NodeExecutionError) else exc
    if isinstance(original, RetryableError):
        return True
    name = type(original).__name__
    if name in {"OutOfMemoryError", "AcceleratorError"}:
        return True
    text = str(original).lower()
    return any(s in text for s in ("out of memory", "cuda error", "device-side assert", "slowdown", "throttl"))
