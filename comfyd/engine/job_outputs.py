"""A finished job's saved files, put through the OutputStore with their metadata."""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from comfyd.engine.errors import OutputsPendingError
from comfyd.engine.interfaces import JobRecord, OutputStore
from comfyd.engine.job_views import output_images
from comfyd.safepath import safe_join

if TYPE_CHECKING:
    from comfyd.settings import Settings


def store_outputs(
    job: JobRecord, outputs: dict[str, Any], output_store: OutputStore, settings: Settings
) -> list[str]:
    """Put every `type: output` file (image, video, audio) the job saved through the OutputStore; their keys (the
    record keeps keys, never URLs: a presigned URL is signed when the job is shown).

    When the store refuses one (OutputsPendingError: it is kept in the store's spool), the rest
    go to that spool too (`spool_put`, no waiting) and OutputsPendingError is raised with every
    key, so that the retry completes from them instead of rendering again."""
    keys: list[str] = []
    pending: OutputsPendingError | None = None
    spool_put = getattr(output_store, "spool_put", None)
    metadata = output_metadata(job)
    for image in output_images(outputs):  # every saved file (image, video, audio) of type output
        subfolder = str(image.get("subfolder") or "")
        filename = str(image.get("filename") or "")
        if not filename:
            continue
        path = safe_join(settings.output_dir, *(p for p in (subfolder, filename) if p))
        relative = f"{subfolder}/{filename}" if subfolder else filename
        if pending is not None:
            if spool_put is None:
                raise pending
            keys.append(spool_put(job.id, relative, path.read_bytes(), content_type(filename), metadata).key)
            continue
        try:
            stored = output_store.put(job.id, relative, path.read_bytes(), content_type(filename), metadata)
        except OutputsPendingError as exc:
            pending = exc
            keys.extend(exc.keys)
            continue
        keys.append(stored.key)
    if pending is not None:
        raise OutputsPendingError(str(pending), keys) from pending
    return keys


def output_metadata(job: JobRecord) -> dict[str, str]:
    """What travels with each stored output: the job, its workflow's hash, the followed node's seed."""
    canonical = json.dumps(job.workflow, sort_keys=True, separators=(",", ":"), default=str)
    metadata = {"job_id": job.id, "workflow_sha256": hashlib.sha256(canonical.encode()).hexdigest(),
                "source": job.source}
    followed = job.workflow.get(job.node_id)
    inputs = followed.get("inputs") if isinstance(followed, dict) else None
    if isinstance(inputs, dict):
        for name in ("seed", "noise_seed"):
            if isinstance(inputs.get(name), int):
                metadata["seed"] = str(inputs[name])
                break
    return metadata


# Fixed, so every host (a Lambda image without /etc/mime.types included) answers the same.
CONTENT_TYPES = {
    "png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "webp": "image/webp", "gif": "image/gif",
    "json": "application/json", "mp4": "video/mp4", "webm": "video/webm", "mkv": "video/x-matroska",
    "mov": "video/quicktime", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg",
    "ogg": "audio/ogg", "wav": "audio/wav", "m4a": "audio/mp4",
}


def content_type(filename: str) -> str:
    return CONTENT_TYPES.get(filename.rsplit(".", 1)[-1].lower(), "application/octet-stream")
