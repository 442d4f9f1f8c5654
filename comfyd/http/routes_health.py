"""Health and metrics: GET /health-check (no key: load balancers and container health checks)
and GET /metrics (Prometheus text, with a key when keys are configured)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from comfyd.http.request_models import ERROR_RESPONSES
from comfyd.http.routes_comfy import require_key
from comfyd.http.state import (
    AppState,
    get_state,
)

router = APIRouter(dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)
public_router = APIRouter()  # no key: load balancers and container health checks


def health(state: AppState) -> dict[str, Any]:
    """Cog's health-check body: STARTING, READY, BUSY, SETUP_FAILED, DEFUNCT or UNHEALTHY."""
    from comfyd.engine.job_views import iso_time

    manager = state.manager
    setup_state = manager.setup_state
    try:
        state.services.queue.depth()
        store_ok = True
    except Exception:
        store_ok = False
    if setup_state == "failed":
        status = "SETUP_FAILED"
    elif setup_state == "starting":
        status = "STARTING"
    elif not manager.workers_alive:
        status = "DEFUNCT"
    elif not store_ok:
        status = "UNHEALTHY"
    elif len(manager.running_jobs()) >= state.settings.max_concurrent_jobs:
        status = "BUSY"
    else:
        status = "READY"
    return {
        "status": status,
        "setup": {
            "started_at": iso_time(manager.runtime_started_at),
            "completed_at": iso_time(manager.runtime_completed_at),
            "status": {"succeeded": "succeeded", "failed": "failed"}.get(setup_state),
            "logs": manager.setup_error or "",
        },
    }


@public_router.get("/health-check")
async def health_check(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(health, get_state(request))


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    state = get_state(request)

    def render() -> str:
        m = state.services.metrics
        m.gauge("QueueDepth", state.services.queue.depth())
        m.gauge("JobsRunning", len(state.manager.running_jobs()))
        m.gauge("WebsocketClients", state.hub.client_count)
        return m.render()

    text = await run_in_threadpool(render)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")
