"""Newer ComfyUI's jobs API: `GET /api/jobs`, `GET /api/jobs/{id}`, `POST /api/jobs/{id}/cancel`,
with its field names, statuses (pending, in_progress, completed, failed, cancelled), times in
Unix milliseconds and `{"error": "<text>"}` bodies for bad parameters (served at /jobs too, as
ComfyUI serves every route with and without /api). See shared/reference/comfyui-jobs-api.md.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.job_views import public_extra_data
from comfyd.http.request_models import ERROR_RESPONSES
from comfyd.http.routes_comfy import require_key
from comfyd.http.state import JOB_ID_RE, AppState, get_state

router = APIRouter(dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

STATUS = {
    JobStatus.QUEUED: "pending",
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.FAILED: "failed",
    JobStatus.TIMED_OUT: "failed",
    JobStatus.CANCELED: "cancelled",
}
SORT_KEYS = {"created_at": "created_at", "create_time": "created_at",
             "execution_duration": "execution_duration", "execution_time": "execution_duration"}
PREVIEWABLE = ("images", "video", "gifs", "audio")


def _ms(ts: float | None) -> int | None:
    return int(ts * 1000) if ts is not None else None


def _execution_error(job: JobRecord) -> dict[str, Any] | None:
    if job.status not in (JobStatus.FAILED, JobStatus.TIMED_OUT):
        return None
    for event, data in reversed(job.messages):
        if event == "execution_error" and isinstance(data, dict):
            return {k: data.get(k) for k in ("node_id", "node_type", "exception_message", "exception_type",
                                               "traceback", "current_inputs", "current_outputs")}
    error = job.error or {}
    return {"node_id": error.get("node_id"), "node_type": error.get("node_type"),
            "exception_message": error.get("message") or job.status.value,
            "exception_type": error.get("exception_type") or error.get("type") or "Exception",
            "traceback": error.get("traceback") or [], "current_inputs": {}, "current_outputs": {}}


def _output_items(job: JobRecord) -> list[tuple[str, str, dict[str, Any]]]:
    items = []
    for node_id, ui in job.outputs.items():
        if isinstance(ui, dict):
            for media, values in ui.items():
                if isinstance(values, list):
                    items.extend((str(node_id), media, v) for v in values if isinstance(v, dict))
    return items


def _preview(items: list[tuple[str, str, dict[str, Any]]]) -> dict[str, Any] | None:
    previewable = [i for i in items if i[1] in PREVIEWABLE and i[2].get("filename")]
    previewable.sort(key=lambda i: i[2].get("type") != "output")  # stable: prefers saved outputs
    if not previewable:
        return None
    node_id, media, item = previewable[0]
    return {**item, "nodeId": node_id, "mediaType": media}


def _workflow_id(job: JobRecord) -> str | None:
    info = job.extra_data.get("extra_pnginfo")
    workflow = info.get("workflow") if isinstance(info, dict) else None
    value = workflow.get("id") if isinstance(workflow, dict) else None
    return value if isinstance(value, str) else None


def job_entry(job: JobRecord) -> dict[str, Any]:
    terminal = job.status.terminal
    items = _output_items(job) if terminal else []
    entry: dict[str, Any] = {
        "id": job.id, "status": STATUS[job.status], "create_time": _ms(job.created_at), "priority": job.priority,
        "execution_start_time": _ms(job.started_at) if terminal else None,
        "execution_end_time": _ms(job.finished_at) if terminal and job.started_at is not None else None,
        "execution_error": _execution_error(job), "outputs_count": len(items),
        "preview_output": _preview(items), "workflow_id": _workflow_id(job),
    }
    return {k: v for k, v in entry.items() if v is not None}  # absent, not null, as ComfyUI


def job_detail(job: JobRecord) -> dict[str, Any]:
    detail = job_entry(job)
    detail["update_time"] = _ms(job.finished_at or job.started_at or job.created_at)
    extra = public_extra_data(job)
    if "api_key_comfy_org" in extra:
        extra["api_key_comfy_org"] = "[REDACTED]"
    detail["workflow"] = {"prompt": job.workflow, "extra_data": extra}
    if job.status.terminal:
        success = job.status is JobStatus.SUCCEEDED
        detail["outputs"] = job.outputs
        detail["execution_status"] = {"status_str": "success" if success else "error", "completed": success,
                                      "messages": job.messages}
    return detail


def _bad(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


def _duration(job: JobRecord) -> float:
    if job.started_at is None or job.finished_at is None:
        return -1.0
    return job.finished_at - job.started_at


def _list(state: AppState, statuses: set[str] | None, workflow_id: str | None, sort_key: str, descending: bool,
          limit: int | None, offset: int) -> dict[str, Any]:
    jobs = state.services.job_store.list(limit=100_000)
    jobs = [j for j in jobs if (statuses is None or STATUS[j.status] in statuses)
            and (workflow_id is None or _workflow_id(j) == workflow_id)]
    if sort_key == "execution_duration":
        jobs.sort(key=_duration, reverse=descending)
    else:
        jobs.sort(key=lambda j: (j.created_at, j.number), reverse=descending)
    total = len(jobs)
    page = jobs[offset:] if limit is None else jobs[offset:offset + limit]
    return {"jobs": [job_entry(j) for j in page],
            "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": offset + len(page) < total}}


@router.get("/jobs")
async def list_jobs(request: Request) -> Any:
    query = request.query_params
    statuses = None
    if query.get("status"):
        statuses = {s.strip() for s in query["status"].split(",") if s.strip()}
        unknown = statuses - set(STATUS.values())
        if unknown:
            return _bad(f"Invalid status value(s): {', '.join(sorted(unknown))}. Valid values: "
                        f"{', '.join(sorted(set(STATUS.values())))}")
    sort_by = query.get("sort_by", "created_at")
    if sort_by not in SORT_KEYS:
        return _bad("sort_by must be 'created_at' or 'execution_duration'")
    sort_order = query.get("sort_order", "desc")
    if sort_order not in ("asc", "desc"):
        return _bad("sort_order must be 'asc' or 'desc'")
    limit = None
    if query.get("limit") is not None:
        try:
            limit = int(query["limit"])
        except ValueError:
            return _bad("limit must be an integer")
        if limit <= 0:
            return _bad("limit must be a positive integer")
    try:
        offset = max(0, int(query.get("offset", "0")))
    except ValueError:
        return _bad("offset must be an integer")
    return await run_in_threadpool(_list, get_state(request), statuses, query.get("workflow_id") or None,
                                   SORT_KEYS[sort_by], sort_order == "desc", limit, offset)


@router.get("/jobs/{job_id}")
async def get_job(request: Request, job_id: str) -> Any:
    job = await run_in_threadpool(get_state(request).services.job_store.get, job_id)
    if job is None:
        return JSONResponse({"error": "Job not found"}, status_code=404)
    return job_detail(job)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, job_id: str) -> Any:
    """`{"cancelled": true}` when this call stopped the job; false when it had ended or was
    already being cancelled (still 200)."""
    if not JOB_ID_RE.match(job_id):
        return _bad("Invalid job_id")
    state = get_state(request)

    def cancel() -> JSONResponse | dict[str, bool]:
        job = state.services.job_store.get(job_id)
        if job is None:
            return JSONResponse({"error": "Job not found"}, status_code=404)
        if job.status.terminal or job.cancel_requested:
            return {"cancelled": False}
        after = state.manager.cancel(job_id, "canceled")
        if after is not None and not after.status.terminal:
            state.services.job_store.request_cancel(job_id, "canceled")
        return {"cancelled": True}

    return await run_in_threadpool(cancel)


__all__ = ["job_detail", "job_entry", "router"]
