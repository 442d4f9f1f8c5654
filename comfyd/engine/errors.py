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
    """Validation failed; `body` is ComfyUI's /prompt 400 body ({error, node_errors}).

    `str()` names every problem (see `validation_problems`), not just ComfyUI's summary line.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        summary = (body.get("error") or {}).get("message") or "invalid workflow"
        problems = validation_problems(body)
        if problems and problems != [summary]:
            summary = f"{summary}: " + "; ".join(problems)
        super().__init__(summary)
        self.body = body

    def problems(self) -> list[str]:
        return validation_problems(self.body)


# Longer details (a 300-name choice list, say) are cut: the one-line form is for people.
_MAX_DETAIL_CHARS = 240


def validation_problems(body: dict[str, Any]) -> list[str]:
    """One line per problem of a /prompt error body, e.g.
    `node 3 KSampler.cfg: value inf bigger than max of 100.0`."""
    error = body.get("error") if isinstance(body.get("error"), dict) else {}
    node_errors = body.get("node_errors") if isinstance(body.get("node_errors"), dict) else {}
    lines: list[str] = []
    for node_id, entry in node_errors.items():
        entry = entry if isinstance(entry, dict) else {}
        where_node = f"node {node_id} {entry.get('class_type', '?')}"
        for problem in entry.get("errors") or []:
            if not isinstance(problem, dict):
                continue
            name = (problem.get("extra_info") or {}).get("input_name")
            message = str(problem.get("message") or problem.get("type") or "invalid")
            details = str(problem.get("details") or "")
            if name and details.startswith(f"{name}: "):
                details = details[len(name) + 2 :]
            elif name and details.startswith(f"{name} - "):
                details = details[len(name) + 3 :]
            elif details in ("", name, message):
                details = ""
            text = f"{message}: {details}" if details else message
            if len(text) > _MAX_DETAIL_CHARS:
                text = text[: _MAX_DETAIL_CHARS - 3] + "..."
            where = f"{where_node}.{name}" if name else where_node
            lines.append(f"{where}: {text[:1].lower()}{text[1:]}")
    if not lines:
        message = str(error.get("message") or "invalid workflow")
        details = error.get("details")
        lines.append(f"{message}: {details}" if isinstance(details, str) and details else message)
    return lines


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
