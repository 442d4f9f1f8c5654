"""How jobs and assets look in Comfy API v2: pure functions of the stored records."""

from __future__ import annotations

import time
from typing import Any

from comfyd.engine.assets import AssetRecord
from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.job_views import iso_time
from comfyd.http.v2.asset_files import output_type

PREFIX = "/api/v2"
URL_TTL_S = 3600  # how long a content link is announced as valid
JOB_RETENTION_S = 7 * 24 * 3600  # nominal: comfyd keeps jobs until history_max_items prunes them

V2_STATUS = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "running",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.TIMED_OUT: "failed",
    JobStatus.CANCELED: "canceled",
}
TERMINAL = frozenset({"succeeded", "failed", "canceled", "expired"})
ERROR_CODES = {"execution_error": "node_execution_error", "timed_out": "timeout", "crashed": "worker_crashed",
               "internal_error": "internal_error", "retryable": "node_execution_error"}


def v2_status(job: JobRecord) -> str:
    if job.status in (JobStatus.QUEUED, JobStatus.RUNNING) and job.cancel_requested:
        return "canceling"
    return V2_STATUS[job.status]


def job_urls(job_id: str) -> dict[str, str]:
    base = f"{PREFIX}/jobs/{job_id}"
    return {"self": base, "events": f"{base}/events", "cancel": f"{base}/cancel"}


def content_url(base_url: str, asset_id: str) -> str:
    return f"{base_url.rstrip('/')}{PREFIX}/assets/{asset_id}/content"


def output_view(asset: AssetRecord, base_url: str) -> dict[str, Any]:
    name = asset.file_path.rsplit("/", 1)[-1]
    return {
        "node_id": asset.node_id or "", "name": name, "type": output_type(name),
        "content_type": asset.content_type, "size_bytes": asset.size, "id": asset.id, "hash": asset.hash,
        "url": content_url(base_url, asset.id), "url_expires_at": iso_time(time.time() + URL_TTL_S),
        "job_id": asset.job_id,
    }


def asset_view(asset: AssetRecord, base_url: str, created_new: bool | None = None) -> dict[str, Any]:
    view: dict[str, Any] = {
        "id": asset.id, "hash": asset.hash, "size_bytes": asset.size, "content_type": asset.content_type,
        "file_path": asset.file_path, "created_at": iso_time(asset.created_at),
        "url": content_url(base_url, asset.id), "url_expires_at": iso_time(time.time() + URL_TTL_S),
        "expires_at": iso_time(asset.expires_at), "tags": list(asset.tags),
    }
    if created_new is not None:
        view["created_new"] = created_new
    if asset.job_id is not None:
        view["job_id"] = asset.job_id
    return view


def job_error(job: JobRecord) -> dict[str, Any] | None:
    if job.status not in (JobStatus.FAILED, JobStatus.TIMED_OUT):
        return None
    error = job.error or {}
    kind = str(error.get("type") or ("timed_out" if job.status is JobStatus.TIMED_OUT else "execution_error"))
    traceback = error.get("traceback")
    if isinstance(traceback, list):
        traceback = "".join(str(line) for line in traceback)
    node_id = error.get("node_id")
    return {
        "code": ERROR_CODES.get(kind, kind), "message": str(error.get("message") or "the job failed"),
        "node_id": str(node_id) if node_id is not None else None, "class_type": error.get("node_type"),
        "traceback": traceback or None,
    }


def job_metrics(job: JobRecord) -> dict[str, int | None]:
    queue_ms = execution_ms = None
    if job.started_at is not None:
        queue_ms = int((job.started_at - job.created_at) * 1000)
        end = job.finished_at if job.finished_at is not None else time.time()
        execution_ms = int((end - job.started_at) * 1000)
    return {"queue_ms": max(0, queue_ms) if queue_ms is not None else None,
            "execution_ms": max(0, execution_ms) if execution_ms is not None else None}


def stored_progress(job: JobRecord, status: str) -> dict[str, Any] | None:
    """A Progress snapshot from the store alone (no live events for this job here)."""
    nodes = [n for n, v in job.workflow.items() if isinstance(v, dict)]
    if status == "succeeded":
        return {"value": 1.0, "nodes_done": len(nodes), "nodes_total": len(nodes), "current_node": None,
                "current_node_class": None, "step": None, "steps": None, "message": None}
    progress = job.progress or {}
    if status not in ("running", "canceling") or not progress:
        return None
    step, steps = progress.get("value"), progress.get("max")
    node = progress.get("node")
    value = min(1.0, step / steps) if isinstance(step, int | float) and isinstance(steps, int | float) and steps else 0.0
    class_type = job.workflow.get(str(node), {}).get("class_type") if node is not None else None
    return {"value": round(value, 4), "nodes_done": len(job.node_timings), "nodes_total": len(nodes),
            "current_node": str(node) if node is not None else None, "current_node_class": class_type,
            "step": step, "steps": steps, "message": None}


def job_labels(job: JobRecord) -> dict[str, str]:
    v2 = job.extra_data.get("v2")
    labels = v2.get("metadata") if isinstance(v2, dict) else None
    return dict(labels) if isinstance(labels, dict) else {}


def job_view(
    job: JobRecord, base_url: str, *, status: str, outputs: list[AssetRecord], progress: dict[str, Any] | None,
    queue_position: int | None,
) -> dict[str, Any]:
    return {
        "id": job.id,
        "status": status,
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "completed_at": iso_time(job.finished_at) if status in TERMINAL else None,
        "expires_at": iso_time(job.expires_at or job.created_at + JOB_RETENTION_S),
        "queue_position": queue_position,
        "progress": progress,
        "outputs": [output_view(a, base_url) for a in outputs],
        "error": job_error(job),
        "metrics": job_metrics(job),
        "urls": job_urls(job.id),
        "metadata": job_labels(job),
        "priority": job.priority,
    }


def job_summary(job: JobRecord, status: str) -> dict[str, Any]:
    """A `GET /api/v2/jobs` list item (what the Python SDK's list_jobs reads)."""
    update = job.finished_at or job.started_at or job.created_at
    return {"id": job.id, "status": status, "create_time": iso_time(job.created_at),
            "update_time": iso_time(update), "deployment_id": None, "metadata": job_labels(job),
            "urls": job_urls(job.id)}
