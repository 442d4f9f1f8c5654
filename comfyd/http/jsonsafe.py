"""Responses that always serialise, whatever a stored record or an echoed input holds.

A job record may carry values no JSON encoder accepts as they are: a lone UTF-16 surrogate
("\\ud800", valid in a Python str, not encodable as UTF-8), NaN or Infinity (not JSON), or
nesting deep enough to exhaust the recursion limit. Validation refuses such input now, but
records stored before (or written by another process) must not turn every read route into a
500. `scrub` turns any value into strict JSON: lone surrogates become U+FFFD, non-finite floats
become null, anything past `MAX_DEPTH` levels is cut to null, unknown objects become their str().
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi.responses import JSONResponse

MAX_DEPTH = 64
T = TypeVar("T")


def _replace(text: str) -> str:
    return "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)


def scrub(value: Any, depth: int = 0) -> Any:
    """`value` as strict, encodable JSON data (see the module docstring)."""
    if depth > MAX_DEPTH:
        return None
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return _clean(value)
    if isinstance(value, dict):
        return {_clean(str(k)): scrub(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [scrub(v, depth + 1) for v in value]
    if hasattr(value, "value") and isinstance(getattr(value, "value", None), str):  # enums
        return _clean(value.value)
    return _clean(str(value))


def _clean(text: str) -> str:
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _replace(text)


def dumps(content: Any) -> bytes:
    """Strict JSON bytes of `content`; scrubbed only when the fast path cannot encode it."""
    try:
        return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (ValueError, TypeError, UnicodeEncodeError, RecursionError):
        return json.dumps(scrub(content), ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")


class SafeJSONResponse(JSONResponse):
    """The server's JSON response: never fails to serialise (see `dumps`)."""

    def render(self, content: Any) -> bytes:
        return dumps(content)


def scrub_record(record: T) -> T:
    """A copy of a dataclass record with every field scrubbed (for views that format strings)."""
    if not dataclasses.is_dataclass(record) or isinstance(record, type):
        return record
    changes = {}
    for f in dataclasses.fields(record):
        value = getattr(record, f.name)
        if isinstance(value, str | dict | list | float):
            changes[f.name] = scrub(value)
    return dataclasses.replace(record, **changes)


def render_robustly(record: T, view: Callable[[T], Any], fallback: Callable[[T], Any]) -> Any:
    """`view(record)`; if the record holds something the view cannot format, the view of the
    scrubbed record; if even that fails, `fallback(record)`. A read route never fails on data."""
    try:
        return view(record)
    except Exception:
        pass
    try:
        return view(scrub_record(record))
    except Exception:
        return fallback(record)
