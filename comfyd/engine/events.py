"""ComfyUI websocket event payloads, built in one place so every edge sends the same shapes."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

# listener(event_type, data): called from executor threads; must be thread-safe and fast.
Listener = Callable[[str, dict[str, Any]], None]

EXECUTION_START = "execution_start"
EXECUTION_CACHED = "execution_cached"
EXECUTING = "executing"
PROGRESS = "progress"
EXECUTED = "executed"
EXECUTION_SUCCESS = "execution_success"
EXECUTION_ERROR = "execution_error"
EXECUTION_INTERRUPTED = "execution_interrupted"


def timestamp_ms() -> int:
    """ComfyUI's `timestamp` field: wall-clock milliseconds."""
    return int(time.time() * 1000)


def full_type_name(cls: type) -> str:
    """`ValueError` for builtins, `torch.OutOfMemoryError` otherwise (ComfyUI's exception_type)."""
    module = cls.__module__
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def format_value(value: Any, limit: int = 200) -> Any:
    """A node input for `execution_error.current_inputs`: primitives as they are, others described."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    shape = getattr(value, "shape", None)
    if shape is not None:
        return f"{type(value).__name__}(shape={list(shape)}, dtype={getattr(value, 'dtype', '?')})"
    text = str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SafeListener:
    """Wraps a caller's listener: a listener that raises is logged, never fails the job."""

    def __init__(self, listener: Listener | None) -> None:
        self._listener = listener

    def __call__(self, event: str, data: dict[str, Any]) -> None:
        if self._listener is None:
            return
        try:
            self._listener(event, data)
        except Exception:
            log.exception("event listener failed on %s", event)
