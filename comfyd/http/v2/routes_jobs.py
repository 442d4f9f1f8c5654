"""Comfy API v2 jobs: submit (single-use Idempotency-Key), read, list, workflow, cancel, health.

v2 jobs are ordinary comfyd jobs (source "v2"): one store, one queue, the same priorities,
limits, retries, webhooks and backends as /prompt and /predictions.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from comfyd.engine.interfaces import JobRecord
from comfyd.http.errors import ApiError, ComfyError
from comfyd.http.request_models import V2_RESPONSES
from comfyd.http.routes_comfy import require_key
from comfyd.http.state import MAX_PRIORITY, AppState, get_state, json_object
from comfyd.http.v2.errors import V2Error, invalid, not_found
from comfyd.http.v2.service import V2Service, base_url, get_v2
from comfyd.http.v2.views import job_summary, v2_status
from comfyd.http.v2.workflow_assets import resolve_asset_refs

router = APIRouter(prefix="/api/v2", responses=V2_RESPONSES)
ALLOWED_FIELDS = frozenset({"workflow", "extra_data", "metadata", "priority"})
RESERVED_FIELDS = frozenset({"webhook_url", "inputs"})
MAX_LABELS = 16
MAX_LABEL_KEY = 64
MAX_LABEL_VALUE = 512


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    """Unauthenticated liveness (as comfy-api-proxy's); reads nothing that can block."""
    from comfyd import __version__

    state = get_state(request)
    return {"status": "healthy", "version": __version__, "setup": state.manager.setup_state}


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if not 1 <= len(key) <= 255 or not all(32 <= ord(c) < 127 for c in key):
        raise invalid("Idempotency-Key must be 1-255 printable ASCII characters", {"location": "Idempotency-Key"},
                      status=400)
    return key


def _labels(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise V2Error(422, "metadata_invalid", "'metadata' must be an object of string labels")
    if len(value) > MAX_LABELS:
        raise V2Error(422, "metadata_invalid", f"'metadata' has {len(value)} pairs; at most {MAX_LABELS} are allowed")
    for key, label in value.items():
        if not isinstance(label, str):
            raise V2Error(422, "metadata_invalid", f"metadata[{key!r}] must be a string")
        if not key or len(key) > MAX_LABEL_KEY or len(label) > MAX_LABEL_VALUE:
            raise V2Error(422, "metadata_invalid", f"metadata[{key[:80]!r}]: keys are 1-{MAX_LABEL_KEY} characters, "
                          f"values at most {MAX_LABEL_VALUE}")
    return dict(value)


def check_submission(body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str], int | None]:
    """The workflow, labels and priority of a POST /jobs body; V2Error when malformed."""
    reserved = sorted(set(body) & RESERVED_FIELDS)
    if reserved:
        raise invalid(f"{', '.join(reserved)} is reserved and not accepted yet", {"location": reserved[0]})
    unknown = sorted(set(body) - ALLOWED_FIELDS - RESERVED_FIELDS)
    if unknown:
        raise invalid(f"unknown field(s): {', '.join(unknown)}", {"location": unknown[0]}, status=400)
    workflow = body.get("workflow")
    if not isinstance(workflow, dict) or not workflow:
        raise invalid("'workflow' (an API-format graph, a non-empty object) is required", {"location": "workflow"})
    if isinstance(workflow.get("nodes"), list) and ("links" in workflow or "last_node_id" in workflow):
        raise V2Error(422, "workflow_format_ui", "the workflow is a UI export (nodes/links); submit the API-format "
                      "graph (ComfyUI: Export (API))")
    extra = body.get("extra_data")
    if extra is not None:
        if not isinstance(extra, dict) or set(extra) - {"api_key_comfy_org"}:
            raise invalid("'extra_data' takes only 'api_key_comfy_org'", {"location": "extra_data"}, status=400)
        if not isinstance(extra.get("api_key_comfy_org", ""), str):
            raise invalid("'extra_data.api_key_comfy_org' must be a string", {"location": "extra_data"}, status=400)
    priority = body.get("priority")
    if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int)
                                 or not 1 <= priority <= MAX_PRIORITY):
        raise invalid(f"'priority' must be an integer 1-{MAX_PRIORITY} (higher runs first)", {"location": "priority"})
    return workflow, _labels(body.get("metadata")), priority


def _accept(state: AppState, v2: V2Service, principal: str, workflow: dict[str, Any], labels: dict[str, str],
            priority: int | None) -> JobRecord:
    resolved, asset_ids = resolve_asset_refs(workflow, v2.assets, state.settings.input_dir,
                                             principal if state.keys.enabled else None)
    job_id = str(uuid.uuid4())
    job = state.job_from_body({"prompt": resolved, "client_id": job_id}, source="v2", job_id=job_id,
                              extra_data={"v2": {"metadata": labels, "assets": asset_ids}}, priority=priority)
    return state.submit(job).job


@router.post("/jobs", status_code=201)
async def submit_job(request: Request, principal: str = Depends(require_key)) -> JSONResponse:
    state, v2 = get_state(request), get_v2(request)
    key = idempotency_key(request)
    body = await json_object(request)
    workflow, labels, priority = check_submission(body)
    state.check_rate(principal)
    if key is not None and not await run_in_threadpool(v2.idempotency.claim, principal, key, time.time()):
        raise V2Error(422, "idempotency_key_reuse", "this Idempotency-Key was used already; poll or list for the "
                      "job it created instead of submitting again", {"idempotency_key": key})
    try:
        job = await run_in_threadpool(_accept, state, v2, principal, workflow, labels, priority)
    except (V2Error, ApiError, ComfyError):  # refused, nothing created: the key may be used again
        if key is not None:
            await run_in_threadpool(v2.idempotency.release, principal, key)
        raise
    if key is not None:
        await run_in_threadpool(v2.idempotency.bind, principal, key, job.id)
    view = await run_in_threadpool(v2.view, job, base_url(request))
    return JSONResponse(view, status_code=201, headers={"Location": view["urls"]["self"]})


async def _job(request: Request, job_id: str) -> JobRecord:
    job = await run_in_threadpool(get_state(request).services.job_store.get, job_id)
    if job is None:
        raise not_found(f"no job {job_id!r}")
    return job


@router.get("/jobs/{job_id}", dependencies=[Depends(require_key)])
async def get_job(request: Request, job_id: str) -> dict[str, Any]:
    job = await _job(request, job_id)
    return await run_in_threadpool(get_v2(request).view, job, base_url(request))


@router.get("/jobs/{job_id}/workflow", dependencies=[Depends(require_key)])
async def get_job_workflow(request: Request, job_id: str) -> dict[str, Any]:
    job = await _job(request, job_id)
    return {"workflow": job.workflow, "format": "api"}


@router.post("/jobs/{job_id}/cancel", dependencies=[Depends(require_key)])
async def cancel_job(request: Request, job_id: str) -> dict[str, Any]:
    state, v2 = get_state(request), get_v2(request)
    job = await _job(request, job_id)

    def cancel() -> JobRecord:
        current = job
        if not current.status.terminal:
            current = state.manager.cancel(job_id, "canceled") or current
            if not current.status.terminal:  # running: canceling until the run stops
                state.services.job_store.request_cancel(job_id, "canceled")
            current = state.services.job_store.get(job_id) or current
        v2.live.publish_status(current)
        return current

    final = await run_in_threadpool(cancel)
    return await run_in_threadpool(v2.view, final, base_url(request))


def _cursor(value: str | None) -> tuple[float, str] | None:
    if not value:
        return None
    try:
        created, job_id = json.loads(base64.urlsafe_b64decode(value.encode() + b"==").decode())
        return float(created), str(job_id)
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid("'cursor' is not a cursor this server gave out", {"location": "cursor"}, status=400) from None


def _encode_cursor(job: JobRecord) -> str:
    return base64.urlsafe_b64encode(json.dumps([job.created_at, job.id]).encode()).decode().rstrip("=")


def _list(state: AppState, request: Request, limit: int, cursor: tuple[float, str] | None,
          statuses: set[str] | None) -> dict[str, Any]:
    filters = {k[len("metadata["):-1]: v for k, v in request.query_params.multi_items()
               if k.startswith("metadata[") and k.endswith("]")}
    jobs = state.services.job_store.list(limit=100_000)
    jobs.sort(key=lambda j: (j.created_at, j.id), reverse=True)
    page: list[dict[str, Any]] = []
    next_cursor = None
    last: JobRecord | None = None
    for job in jobs:
        if cursor is not None and (job.created_at, job.id) >= cursor:
            continue
        status = v2_status(job)
        summary = job_summary(job, status)
        if statuses is not None and status not in statuses:
            continue
        if any(summary["metadata"].get(k) != v for k, v in filters.items()):
            continue
        if len(page) == limit and last is not None:
            next_cursor = _encode_cursor(last)
            break
        page.append(summary)
        last = job
    return {"jobs": page, "next_cursor": next_cursor}


@router.get("/jobs", dependencies=[Depends(require_key)])
async def list_jobs(
    request: Request, limit: int = Query(20, ge=1, le=100), cursor: str | None = Query(None),
    status: str | None = Query(None),
) -> dict[str, Any]:
    statuses = None
    if status:
        statuses = {s.strip() for s in status.split(",") if s.strip()}
        unknown = statuses - {"queued", "running", "succeeded", "canceling", "canceled", "failed", "expired"}
        if unknown:
            raise invalid(f"unknown status {sorted(unknown)[0]!r}", {"location": "status"}, status=400)
    return await run_in_threadpool(_list, get_state(request), request, limit, _cursor(cursor), statuses)
