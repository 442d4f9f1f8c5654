"""Comfy API v2, served natively under /api/v2 (the spec: shared/reference/comfy-api-v2.md).

    install_v2(app, state)   # routes, the v2 error envelope, live job events

Modules: routes_jobs (submit, read, list, workflow, cancel, health), sse (the events stream),
routes_assets (upload, from-hash, by-hash, read, delete, content), views (the JSON shapes),
live (progress, previews and the per-job event log), asset_files (blake3, uploads, outputs as
assets), workflow_assets (core/ASSET references), errors (the envelope), service (shared state).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from comfyd.engine.interfaces import JobRecord
from comfyd.http.state import AppState
from comfyd.http.v2.errors import install_v2_errors
from comfyd.http.v2.service import V2Service


def install_v2(app: FastAPI, state: AppState) -> V2Service:
    from comfyd.http.v2 import routes_assets, routes_jobs, sse

    v2 = V2Service(state)
    app.state.comfyd_v2 = v2

    def listener(job: JobRecord, event: str, data: dict[str, Any]) -> None:
        v2.live.on_job_event(job, event, data)
        if event == "executing" and data.get("node") is None and job.id:  # the end is stored
            final = state.services.job_store.get(job.id)
            if final is not None:
                v2.live.publish_status(final)

    state.manager.add_listener(listener)
    app.include_router(routes_jobs.router)
    app.include_router(sse.router)
    app.include_router(routes_assets.router)
    install_v2_errors(app)
    return v2


__all__ = ["V2Service", "install_v2"]
