"""Joining untrusted names onto trusted directories without ever leaving them.

Every path that comes from a workflow, an upload or a URL (`filename_prefix`, `LoadImage`'s
`image`, `/view?filename=&subfolder=`, a checkpoint name) goes through `safe_join`. It refuses,
rather than repairs, anything that could point outside the base directory: a caller that sends
`../x` has made a mistake or is attacking, and either way deserves a clear error.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

# Windows drive prefixes ("C:") and UNC-style names are absolute on some systems; refuse everywhere
# so a path that is safe here is safe on any worker.
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
# Longest single file name most filesystems accept, in bytes.
_MAX_NAME_BYTES = 255


class UnsafePathError(ValueError):
    """A user-supplied path part would escape its base directory or is malformed."""

    def __init__(self, part: str, reason: str) -> None:
        super().__init__(f"unsafe path {part!r}: {reason}")
        self.part = part
        self.reason = reason


def _has_control_chars(text: str) -> bool:
    return any(unicodedata.category(ch) == "Cc" for ch in text)


def _check_text(part: str) -> None:
    """Refuse characters and encodings that have no business in a relative path."""
    if "\x00" in part:
        raise UnsafePathError(part, "contains a NUL byte")
    if "\\" in part:
        raise UnsafePathError(part, "contains a backslash (use '/' as the separator)")
    if _has_control_chars(part):
        raise UnsafePathError(part, "contains control characters")
    # Percent-encoding is not decoded by the filesystem, but a layer in front of us (a proxy, a
    # client library) might decode it again, even twice; refuse names whose decoded forms would
    # be dangerous. Harmless escapes ("a%20b.png") stay as they are.
    decoded = part
    for _ in range(3):
        once = unquote(decoded)
        if once == decoded:
            break
        decoded = once
        if "\\" in decoded or decoded.count("/") != part.count("/"):
            raise UnsafePathError(part, "contains a percent-encoded path separator")
        if _has_control_chars(decoded):
            raise UnsafePathError(part, "contains a percent-encoded NUL or control character")
        if ".." in decoded.split("/"):
            raise UnsafePathError(part, "contains a percent-encoded '..' component")


def _components(part: str) -> list[str]:
    """The '/'-separated components of one part; refuses absolute paths and '..'."""
    _check_text(part)
    if part.startswith("/"):
        raise UnsafePathError(part, "is an absolute path")
    if _DRIVE_RE.match(part):
        raise UnsafePathError(part, "starts with a drive letter")
    components: list[str] = []
    for component in part.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            raise UnsafePathError(part, "contains a '..' component")
        if len(component.encode("utf-8")) > _MAX_NAME_BYTES:
            raise UnsafePathError(part, f"has a component longer than {_MAX_NAME_BYTES} bytes")
        components.append(component)
    return components


def safe_join(base: Path | str, *parts: str) -> Path:
    """`base / part1 / part2 ...`, guaranteed to stay inside `base`.

    Each part may hold '/'-separated subfolders ("sub/name.png"); empty parts and '.' components
    are ignored (ComfyUI sends `subfolder=""`). Raises `UnsafePathError` naming the offending part
    for '..', absolute paths, drive letters, NUL or control characters, backslashes,
    percent-encoded separators or dot components, and for symlinks that resolve outside `base`.
    The returned path is not resolved (it keeps the caller's spelling) and need not exist.
    """
    base_path = Path(base)
    components: list[str] = []
    for part in parts:
        if not isinstance(part, str):
            raise UnsafePathError(repr(part), f"is a {type(part).__name__}, not a string")
        components.extend(_components(part))
    candidate = base_path.joinpath(*components)
    # A symlink inside base may point anywhere; judge the path by where it really leads.
    try:
        resolved_base = base_path.resolve()
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long to resolve
        raise UnsafePathError("/".join(components), f"cannot be resolved ({exc})") from None
    if not resolved.is_relative_to(resolved_base):
        raise UnsafePathError("/".join(components), f"resolves outside {base_path} (through a symlink)")
    return candidate


def safe_filename(name: str) -> str:
    """Validate a single file name from an upload (no directories); returns it unchanged.

    Refuses rather than sanitises: a name with separators, '..', NUL, control characters or
    percent-encoded tricks raises `UnsafePathError`, so the client learns what it sent was wrong.
    """
    if not isinstance(name, str):
        raise UnsafePathError(repr(name), f"is a {type(name).__name__}, not a string")
    if name.strip() == "":
        raise UnsafePathError(name, "is empty")
    _check_text(name)
    if "/" in name:
        raise UnsafePathError(name, "contains a '/' (a file name may not name a folder)")
    if name in (".", ".."):
        raise UnsafePathError(name, "is not a file name")
    if _DRIVE_RE.match(name):
        raise UnsafePathError(name, "starts with a drive letter")
    if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
        raise UnsafePathError(name, f"is longer than {_MAX_NAME_BYTES} bytes")
    return name
