"""The v2 layer's per-app state: the asset store, idempotency keys, live job state, and the
reads the routes share (a job's view with its outputs as assets, queue positions)."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Request

from comfyd.engine.assets import AssetRecord, AssetStore, IdempotencyKeys
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.http.state import AppState, get_state
from comfyd.http.v2.asset_files import output_assets
from comfyd.http.v2.errors import V2Error
from comfyd.http.v2.live import LiveJobs
from comfyd.http.v2.views import job_view, stored_progress, v2_status

MAX_STREAMS_PER_CALLER = 16


@dataclass
class V2Service:
    state: AppState
    live: LiveJobs = field(default_factory=lambda: LiveJobs(v2_status))
    streams: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _fallback: tuple[AssetStore, IdempotencyKeys] | None = None

    # ---- stores (embedded ones in the job database; see README for AWS) ----------------------

    def _stores(self) -> tuple[AssetStore, IdempotencyKeys]:
        services = self.state.services
        if services.assets is not None and services.idempotency is not None:
            return services.assets, services.idempotency
        with self._lock:
            if self._fallback is None:  # DynamoDB job store: a local SQLite file (per host)
                from comfyd.backends.sqlite_assets import SqliteAssetStore, SqliteIdempotencyKeys
                from comfyd.backends.sqlite_store import SqliteDatabase

                try:
                    db = SqliteDatabase(Path(self.state.settings.db_path))
                    self._fallback = (SqliteAssetStore(db), SqliteIdempotencyKeys(db))
                except (OSError, sqlite3.Error) as exc:  # e.g. a read-only file system (Lambda)
                    raise V2Error(501, "not_implemented", "assets and idempotency keys need a writable "
                                  f"COMFYD_DB_PATH on this host ({exc})") from None
                services.closers.append(db.close)
            return self._fallback

    @property
    def assets(self) -> AssetStore:
        return self._stores()[0]

    @property
    def idempotency(self) -> IdempotencyKeys:
        return self._stores()[1]

    # ---- streams ------------------------------------------------------------------------------

    def open_stream(self, principal: str) -> bool:
        with self._lock:
            if self.streams.get(principal, 0) >= MAX_STREAMS_PER_CALLER:
                return False
            self.streams[principal] = self.streams.get(principal, 0) + 1
            return True

    def close_stream(self, principal: str) -> None:
        with self._lock:
            left = self.streams.get(principal, 1) - 1
            if left <= 0:
                self.streams.pop(principal, None)
            else:
                self.streams[principal] = left

    # ---- job reads (blocking: call in a worker thread) -----------------------------------------

    def outputs_of(self, job: JobRecord) -> list[AssetRecord]:
        outputs = job.outputs
        if not job.status.terminal:
            live = self.live.get(job.id)
            outputs = dict(live.outputs) if live is not None else {}
        elif job.status is not JobStatus.SUCCEEDED and not outputs:
            return []
        settings = self.state.settings
        return output_assets(job, outputs, self.assets, self.state.services.output_store, settings)

    def queue_position(self, job: JobRecord) -> int | None:
        if job.status is not JobStatus.QUEUED:
            return None
        waiting = self.state.services.job_store.list(status={JobStatus.QUEUED}, limit=100_000)
        waiting.sort(key=lambda j: (-j.priority, j.number, j.created_at))
        for index, other in enumerate(waiting):
            if other.id == job.id:
                return index
        return None

    def progress_of(self, job: JobRecord, status: str) -> dict[str, Any] | None:
        live = self.live.get(job.id)
        if status in ("running", "canceling") and live is not None and live.progress is not None:
            return dict(live.progress)
        return stored_progress(job, status)

    def view(self, job: JobRecord, base_url: str) -> dict[str, Any]:
        status = v2_status(job)
        return job_view(job, base_url, status=status, outputs=self.outputs_of(job),
                        progress=self.progress_of(job, status), queue_position=self.queue_position(job))


def get_v2(request: Request) -> V2Service:
    return request.app.state.comfyd_v2


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


__all__ = ["V2Service", "base_url", "get_state", "get_v2"]
