"""A local disk spool for uploads S3 would not take, and the thread that re-uploads them.

One spooled upload is one file `<uuid>.spool` in the spool directory: a 4-byte big-endian header
length, a JSON header (bucket, key, content type, metadata, encryption) and the bytes. It is
written to a temporary name, fsynced and renamed, so a file with the final name is always
complete. A file leaves the spool only after its upload succeeded, so the bytes survive a crash of
this process; any process that opens the same spool directory uploads leftovers. Two processes
uploading the same entry is harmless: the PUT is idempotent and the deletes tolerate each other.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_HEADER_LENGTH = struct.Struct(">I")
SUFFIX = ".spool"


@dataclass
class SpoolEntry:
    bucket: str
    key: str
    content_type: str
    metadata: dict[str, str]
    extra_args: dict[str, Any] = field(default_factory=dict)  # SSE settings
    created_at: float = field(default_factory=time.time)


UploadFn = Callable[[SpoolEntry, bytes], None]


class Spool:
    """Spool directory + background uploader. `upload` raises while S3 is still failing."""

    def __init__(
        self, directory: Path, upload: UploadFn, *, min_interval_s: float = 1.0, max_interval_s: float = 60.0,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._upload = upload
        self._min_interval_s = min_interval_s
        self._max_interval_s = max_interval_s
        self._interval_s = min_interval_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()

    # --- writing and reading ------------------------------------------------------------
    def write(self, entry: SpoolEntry, data: bytes) -> Path:
        header = json.dumps(entry.__dict__, separators=(",", ":")).encode()
        name = uuid.uuid4().hex
        tmp = self.directory / f".{name}.tmp"
        final = self.directory / f"{name}{SUFFIX}"
        with open(tmp, "wb") as fh:
            fh.write(_HEADER_LENGTH.pack(len(header)))
            fh.write(header)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        self._fsync_dir()
        self.ensure_running()
        self._wake.set()
        return final

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def read(path: Path) -> tuple[SpoolEntry, bytes]:
        blob = Path(path).read_bytes()
        (length,) = _HEADER_LENGTH.unpack_from(blob)
        header = json.loads(blob[_HEADER_LENGTH.size : _HEADER_LENGTH.size + length])
        return SpoolEntry(**header), blob[_HEADER_LENGTH.size + length :]

    def entries(self) -> list[Path]:
        """Committed entries, oldest first."""
        found = [p for p in self.directory.glob(f"*{SUFFIX}") if p.is_file()]
        return sorted(found, key=lambda p: _mtime(p))

    def find(self, bucket: str, key: str) -> bytes | None:
        """The newest spooled bytes for bucket/key, if still waiting for upload."""
        for path in reversed(self.entries()):
            try:
                entry, data = self.read(path)
            except (OSError, ValueError):
                continue
            if entry.bucket == bucket and entry.key == key:
                return data
        return None

    # --- uploading -----------------------------------------------------------------------
    def ensure_running(self) -> None:
        with self._thread_lock:
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="s3-spool-uploader", daemon=True)
                self._thread.start()

    def drain_once(self) -> int:
        """Try every entry once, oldest first; stop at the first failure. Entries uploaded."""
        uploaded = 0
        for path in self.entries():
            try:
                entry, data = self.read(path)
            except FileNotFoundError:
                continue  # another process uploaded it meanwhile
            except (OSError, ValueError, struct.error) as exc:
                log.error("spool entry %s is unreadable (%s); moved aside", path, exc)
                path.rename(path.with_suffix(".bad"))
                continue
            try:
                self._upload(entry, data)
            except Exception as exc:  # S3 still failing: back off, keep the entry
                log.warning("spooled upload of s3://%s/%s still failing: %s", entry.bucket, entry.key, exc)
                return uploaded
            path.unlink(missing_ok=True)
            uploaded += 1
            log.info("spooled output uploaded: s3://%s/%s", entry.bucket, entry.key)
            with self._changed:
                self._changed.notify_all()
        return uploaded

    def _run(self) -> None:
        while not self._stop.is_set():
            pending = bool(self.entries())
            if pending:
                before = len(self.entries())
                uploaded = self.drain_once()
                if uploaded < before:
                    self._interval_s = min(self._interval_s * 2, self._max_interval_s)
                else:
                    self._interval_s = self._min_interval_s
            self._wake.wait(self._interval_s if pending else self._max_interval_s)
            self._wake.clear()

    def wait_uploaded(self, path: Path, timeout: float) -> bool:
        """Block until the entry at `path` has left the spool (uploaded by any process)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while path.exists():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                # Woken by this process's uploader; the poll catches other processes' uploads.
                self._changed.wait(min(left, 0.5))
        return True

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
