"""/view and the upload routes when hosts share an output store (COMFYD_STORAGE=s3).

An API host serves outputs that a worker stored (found by name through the store's index) and
inputs uploaded through another API host; an upload is also stored in the shared store, so a
worker on another machine can run LoadImage on it (comfyd.engine.job_inputs). With local
storage every function here does nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from comfyd.engine.job_inputs import shared_inputs
from comfyd.http.errors import ApiError
from comfyd.http.state import AppState

log = logging.getLogger("comfyd.http")


def _storage_error(what: str, exc: Exception) -> ApiError:
    return ApiError(503, "StorageUnavailable", f"{what}: the shared store did not answer ({exc})")


def share_upload(state: AppState, file_type: str, subfolder: str, name: str, data: bytes) -> None:
    """Store an uploaded input in the shared store too (by content, pointed to by its name)."""
    shared = shared_inputs(state.services.output_store)
    if shared is None or file_type != "input":
        return
    relative = f"{subfolder}/{name}" if subfolder else name
    try:
        shared.put_input(relative, data)
    except Exception as exc:
        raise _storage_error(f"upload {relative!r} was kept on this host only", exc) from None


def shared_output(state: AppState, subfolder: str, filename: str) -> bytes | None:
    """An output another host stored, by its (subfolder/)filename; None if the store has none."""
    store: Any = state.services.output_store
    find = getattr(store, "output_key_by_name", None)
    if find is None:
        return None
    relative = f"{subfolder}/{filename}" if subfolder else filename
    try:
        key = find(relative)
        return None if key is None else store.get(key)
    except (KeyError, ValueError):
        return None
    except Exception as exc:
        raise _storage_error(f"output {relative!r}", exc) from None


def fetch_shared_input(state: AppState, subfolder: str, filename: str, dest: Path) -> bool:
    """Bring an input uploaded through another host to `dest`; False if the store has none."""
    shared = shared_inputs(state.services.output_store)
    if shared is None:
        return False
    relative = f"{subfolder}/{filename}" if subfolder else filename
    try:
        key = shared.input_key(relative)
        if key is None:
            return False
        shared.fetch_input(key, dest)
        return True
    except (KeyError, ValueError):
        return False
    except Exception as exc:
        raise _storage_error(f"input {relative!r}", exc) from None
