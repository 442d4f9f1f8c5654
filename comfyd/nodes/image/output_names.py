"""Output file names that a re-run of the same job reuses.

SaveImage names files ComfyUI's way, `{stem}_{counter:05}_.png` with the counter after the
highest one in the folder. A job re-run after a crash (kill -9 after the PNG was written, before
success was recorded) would pick the next counter and leave two files, history naming only the
second. So each name is *reserved* for (job, node, batch index) in a small ledger in the folder
(`.comfyd-names.json`) before the file is written, and a re-run of the job finds its reservation
and overwrites the same file. Object-store keys derive from these names, so they repeat too.

The ledger is read and written under an exclusive `flock` on `.comfyd-names.lock`, so processes
and threads sharing the folder never hand out one name twice; names in the ledger count as
taken even before their file exists. An entry whose file exists is kept for `RERUN_WINDOW_S`
(a job re-run later than that after a crash at save time gets new names); one whose file was
never written, for `LEDGER_TTL_S`. This keeps the ledger, rewritten on every save, small.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from comfyd.engine.context import NodeEnvironment
from comfyd.safepath import UnsafePathError, safe_join

LEDGER_NAME = ".comfyd-names.json"
LOCK_NAME = ".comfyd-names.lock"
LEDGER_TTL_S = 7 * 24 * 3600
RERUN_WINDOW_S = 6 * 3600
_COUNTER_RE = re.compile(r"^[0-9]+$")


def owner_key(job_id: str, node_id: str, index: int) -> str:
    return f"{job_id}/{node_id}/{index}"


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _read_ledger(folder: Path) -> dict[str, dict[str, object]]:
    try:
        data = json.loads((folder / LEDGER_NAME).read_text("utf-8"))
    except (FileNotFoundError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_ledger(folder: Path, ledger: dict[str, dict[str, object]]) -> None:
    """Atomically (tmp + fsync + rename): a kill -9 leaves the old ledger or the new one."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".comfyd-names-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(ledger, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, folder / LEDGER_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _counter_of(name: str, stem: str) -> int | None:
    lead = f"{stem}_"
    if not name.startswith(lead):
        return None
    digits, sep, _tail = name[len(lead):].partition("_")
    return int(digits) if sep and _COUNTER_RE.match(digits) else None


def _keep(folder: Path, name: str, entry: dict[str, object], now: float) -> bool:
    try:
        age = now - float(entry.get("at", 0) or 0)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    if age >= LEDGER_TTL_S:
        return False
    return age < RERUN_WINDOW_S or not (folder / name).exists()


def reserve_name(folder: Path, stem: str, owner: str, start: int) -> str:
    """The file name for `owner` (see `owner_key`): its earlier reservation, or a new name
    `{stem}_{n:05}_.png` with n >= start that neither a file nor a reservation holds."""
    with _locked(folder):
        ledger = _read_ledger(folder)
        now = time.time()
        ledger = {n: e for n, e in ledger.items() if isinstance(e, dict) and _keep(folder, n, e, now)}
        for name, entry in ledger.items():
            if entry.get("owner") == owner and _counter_of(name, stem) is not None:
                return name
        taken = {c for c in (_counter_of(n, stem) for n in ledger) if c is not None}
        counter = start
        while counter in taken or (folder / f"{stem}_{counter:05}_.png").exists():
            counter += 1
        name = f"{stem}_{counter:05}_.png"
        ledger[name] = {"owner": owner, "at": now}
        _write_ledger(folder, ledger)
        return name


def write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file: readers see the old file or the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".comfyd-save-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def expand_prefix_tokens(prefix: str, width: int, height: int, now: time.struct_time | None = None) -> str:
    """ComfyUI's filename tokens: %width% %height% %year% %month% %day% %hour% %minute% %second%,
    and the UI's %date:yyyy-MM-dd% style (yyyy yy MM M dd d hh h mm m ss s)."""
    if "%" not in prefix:
        return prefix
    now = now or time.localtime()
    values = {
        "width": str(width),
        "height": str(height),
        "year": str(now.tm_year),
        "month": f"{now.tm_mon:02}",
        "day": f"{now.tm_mday:02}",
        "hour": f"{now.tm_hour:02}",
        "minute": f"{now.tm_min:02}",
        "second": f"{now.tm_sec:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(f"%{key}%", value)
    date_parts = {
        "yyyy": f"{now.tm_year:04}",
        "yy": f"{now.tm_year % 100:02}",
        "MM": f"{now.tm_mon:02}",
        "M": str(now.tm_mon),
        "dd": f"{now.tm_mday:02}",
        "d": str(now.tm_mday),
        "hh": f"{now.tm_hour:02}",
        "h": str(now.tm_hour),
        "mm": f"{now.tm_min:02}",
        "m": str(now.tm_min),
        "ss": f"{now.tm_sec:02}",
        "s": str(now.tm_sec),
    }
    token = re.compile("|".join(sorted(date_parts, key=len, reverse=True)))
    return re.sub(
        r"%date:([^%]+)%", lambda m: token.sub(lambda t: date_parts[t.group(0)], m.group(1)), prefix
    )


@dataclass(frozen=True)
class SaveTarget:
    """Where a prefix points: `folder` (absolute), `subfolder` ('/'-separated) and the file stem."""

    folder: Path
    subfolder: str
    stem: str


def save_target(base_dir: Path, filename_prefix: str) -> SaveTarget:
    """Split "sub/dir/name" into subfolder and stem, refusing anything that leaves `base_dir`."""
    try:
        safe_join(base_dir, filename_prefix)
    except UnsafePathError as exc:
        raise UnsafePathError(
            filename_prefix, f"filename_prefix would save outside the output folder ({exc.reason})"
        ) from exc
    components = [c for c in filename_prefix.split("/") if c not in ("", ".")]
    stem = components[-1] if components else ""
    subfolder = "/".join(components[:-1])
    folder = safe_join(base_dir, subfolder)
    return SaveTarget(folder=folder, subfolder=subfolder, stem=stem)


def check_filename_prefix(env: NodeEnvironment | None, prefix: Any) -> str | None:
    """SaveImage's validation of `filename_prefix`: refuse, before the job runs, a prefix that
    would save outside the output folder (the node checks again when it runs)."""
    if not isinstance(prefix, str):
        return f"filename_prefix must be text, got {type(prefix).__name__}"
    base = env.output_dir if env is not None else Path("output")
    try:
        save_target(base, expand_prefix_tokens(prefix, 1, 1))
    except UnsafePathError as exc:
        return f"filename_prefix {prefix[:100]!r} would save outside the output folder ({exc.reason})"
    return None
