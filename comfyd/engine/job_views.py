"""How a stored job looks to the outside: ComfyUI history/queue entries and Cog predictions.

Pure functions of a `JobRecord`; the server, the webhooks and the SQS worker all render jobs
through these, so a job looks the same whichever edge reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlencode

from comfyd.engine.interfaces import JobRecord, JobStatus

# Cog has no queued/running/timed_out: its statuses are starting|processing|succeeded|canceled|failed.
COG_STATUS = {
    JobStatus.QUEUED: "starting",
    JobStatus.RUNNING: "processing",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "canceled",
    JobStatus.TIMED_OUT: "failed",
}

# A stored output's key -> a URL a client can GET now (`OutputStore.url`: a presigned URL signed
# at this call, a CloudFront URL, or a local /view URL).
UrlSigner = Callable[[str], "str | None"]

# extra_data keys comfyd adds for its own bookkeeping (not shown in ComfyUI's views).
INTERNAL_EXTRA_KEYS = frozenset({"prediction_input", "webhook", "webhook_events_filter", "partial_execution_targets",
                                 "v2", "request_sha256", "input_keys"})


def iso_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat().replace("+00:00", "Z")


def view_url(image: dict[str, Any]) -> str:
    """A relative /view URL for one ComfyUI image reference."""
    query = {
        "filename": str(image.get("filename", "")),
        "subfolder": str(image.get("subfolder", "")),
        "type": str(image.get("type", "output")),
    }
    return "/view?" + urlencode(query)


# The UI output keys that list saved files: "images" (pictures, and ComfyUI's videos with
# `animated`), "audio" (SaveAudio & co.), "gifs" (VideoHelperSuite's VHS_VideoCombine).
OUTPUT_FILE_KEYS = ("images", "gifs", "audio")


def output_images(outputs: dict[str, Any], include_temp: bool = False) -> list[dict[str, Any]]:
    """Every saved-file reference (images, videos, audio) in ComfyUI UI outputs, in node order."""
    found = []
    for ui in outputs.values():
        if not isinstance(ui, dict):
            continue
        for key in OUTPUT_FILE_KEYS:
            for image in ui.get(key) or []:
                if isinstance(image, dict) and (include_temp or image.get("type", "output") == "output"):
                    found.append(image)
    return found


def public_extra_data(job: JobRecord) -> dict[str, Any]:
    extra = {k: v for k, v in job.extra_data.items() if k not in INTERNAL_EXTRA_KEYS}
    if job.client_id is not None:
        extra.setdefault("client_id", job.client_id)
    return extra


def queue_entry(job: JobRecord, outputs_to_execute: list[str]) -> list[Any]:
    """ComfyUI's queue item: [number, prompt_id, prompt, extra_data, outputs_to_execute]."""
    return [job.number, job.id, job.workflow, public_extra_data(job), outputs_to_execute]


def in_history(job: JobRecord) -> bool:
    """ComfyUI keeps history for prompts that ran; a job canceled while waiting never ran."""
    return job.status.terminal and job.started_at is not None


def history_entry(job: JobRecord, outputs_to_execute: list[str]) -> dict[str, Any]:
    """ComfyUI's /history/{id} value for a finished job."""
    success = job.status is JobStatus.SUCCEEDED
    status: dict[str, Any] = {
        "status_str": "success" if success else "error",
        "completed": success,
        "messages": job.messages,
    }
    if not success:
        status["reason"] = job.status.value  # comfyd's typed terminal reason (additive key)
    return {
        "prompt": queue_entry(job, outputs_to_execute),
        "outputs": job.outputs,
        "status": status,
        "meta": {
            node_id: {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id}
            for node_id in job.outputs
        },
    }


def _absolute(url: str, base_url: str | None) -> str:
    if base_url and url.startswith("/"):
        return base_url.rstrip("/") + url
    return url


def output_urls(job: JobRecord, sign: UrlSigner | None) -> list[str]:
    """URLs of the job's stored outputs, made now from their keys; a record written before keys
    were stored keeps the URLs it was given."""
    if job.output_keys and sign is not None:
        return [url for url in map(sign, job.output_keys) if url]
    return list(job.output_urls)


def prediction_output(job: JobRecord, base_url: str | None = None, include_temp: bool = False,
                      sign: UrlSigner | None = None) -> list[str] | None:
    if job.status is not JobStatus.SUCCEEDED and not job.outputs:
        return None
    urls = output_urls(job, sign)
    if not urls or include_temp:
        urls = [view_url(image) for image in output_images(job.outputs, include_temp)]
    return [_absolute(u, base_url) for u in urls]


def prediction_logs(job: JobRecord) -> str:
    lines = []
    for message in job.messages:
        if not isinstance(message, list) or len(message) != 2:
            continue
        event, data = message
        data = data if isinstance(data, dict) else {}
        if event == "execution_cached" and data.get("nodes"):
            lines.append(f"cached nodes: {', '.join(map(str, data['nodes']))}")
        elif event == "execution_error":
            lines.append(f"error in node {data.get('node_id')} ({data.get('node_type')}): "
                         f"{data.get('exception_type')}: {data.get('exception_message')}")
        else:
            lines.append(event)
    for node_id, seconds in job.node_timings.items():
        lines.append(f"node {node_id}: {seconds:.3f} s")
    progress = job.progress
    if job.status is JobStatus.RUNNING and progress.get("max"):
        lines.append(f"node {progress.get('node')}: step {progress.get('value')}/{progress.get('max')}")
    return "\n".join(lines)


def prediction_error(job: JobRecord) -> str | None:
    if job.status not in (JobStatus.FAILED, JobStatus.TIMED_OUT) or not job.error:
        return None
    message = str(job.error.get("message") or job.status.value)
    if job.status is JobStatus.TIMED_OUT:
        return f"timed_out: {message}"
    where = job.error.get("node_id")
    kind = job.error.get("exception_type")
    prefix = f"node {where} ({job.error.get('node_type')}): " if where else ""
    return f"{prefix}{kind + ': ' if kind else ''}{message}"


def prediction_view(job: JobRecord, base_url: str | None = None, sign: UrlSigner | None = None) -> dict[str, Any]:
    """Replicate Cog's prediction object for a job (plus a `comfyd` block with typed details).
    `sign` (the output store's `url`) turns stored keys into URLs at this moment."""
    stored_input = job.extra_data.get("prediction_input")
    input_view = dict(stored_input) if isinstance(stored_input, dict) else {}
    input_view.setdefault("workflow_json", job.workflow)
    metrics: dict[str, Any] = {}
    if job.started_at is not None and job.finished_at is not None:
        metrics["predict_time"] = round(job.finished_at - job.started_at, 6)
    return {
        "id": job.id,
        "input": input_view,
        "output": prediction_output(job, base_url, bool(input_view.get("return_temp_files")), sign),
        "logs": prediction_logs(job),
        "error": prediction_error(job),
        "status": COG_STATUS[job.status],
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "completed_at": iso_time(job.finished_at),
        "metrics": metrics,
        "comfyd": {
            "status": job.status.value,
            "priority": job.priority,
            "number": job.number,
            "attempts": job.attempts,
            "progress": job.progress,
            "node_timings": job.node_timings,
            "source": job.source,
        },
    }
