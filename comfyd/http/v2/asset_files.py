"""The bytes behind v2 assets: blake3 hashing, where uploads land, and job outputs as assets.

Uploads are written into the input folder under their `file_path` (so LoadImage and the other
loaders read them by that name); a different blob under a taken name gets "name (1).ext", as
ComfyUI's /upload/image does. A job's outputs become assets on first read: their ids are derived
from the job id and the output's key (uuid5), so every reader, in any process, mints the same
ids, and size and hash are computed once and kept in the AssetStore.
"""

from __future__ import annotations

import logging
import mimetypes
import os
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from comfyd.engine.assets import AssetRecord, AssetStore
from comfyd.engine.interfaces import JobRecord, OutputStore
from comfyd.safepath import UnsafePathError, safe_join

if TYPE_CHECKING:
    from comfyd.settings import Settings

log = logging.getLogger("comfyd.http.v2")

OUTPUT_NAMESPACE = uuid.UUID("6f1c1d7e-3b0a-4c55-9a53-0d2f6b7f3a10")
HASH_PREFIX = "blake3:"
IMAGE_EXTS = frozenset({"png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"})
VIDEO_EXTS = frozenset({"mp4", "webm", "mov", "mkv", "avi"})
AUDIO_EXTS = frozenset({"wav", "mp3", "flac", "ogg", "m4a", "opus"})
TEXT_EXTS = frozenset({"txt", "json", "md", "csv"})


def blake3_hex(data: bytes) -> str:
    return HASH_PREFIX + blake3.blake3(data).hexdigest()


def blake3_path(path: Path) -> str:
    hasher = blake3.blake3()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            hasher.update(chunk)
    return HASH_PREFIX + hasher.hexdigest()


def is_blake3(value: str) -> bool:
    hexpart = value[len(HASH_PREFIX):] if value.startswith(HASH_PREFIX) else ""
    return len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart)


def guess_content_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def output_type(name: str) -> str:
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    if ext in AUDIO_EXTS:
        return "audio"
    if ext in TEXT_EXTS:
        return "text"
    if ext == "latent":
        return "latent"
    return "file"


def place_upload(input_dir: Path, file_path: str, data: bytes) -> str:
    """Write an upload into the input folder; its path relative to the folder. The same bytes
    already under that name are reused; other bytes there are never overwritten."""
    target = safe_join(input_dir, file_path)  # raises UnsafePathError
    relative = target.relative_to(Path(input_dir))
    if not relative.parts:
        raise UnsafePathError(file_path, "names no file")
    stem, suffix = os.path.splitext(target.name)
    index = 0
    while target.exists():
        if target.is_file() and target.stat().st_size == len(data) and target.read_bytes() == data:
            return relative.as_posix()
        index += 1
        target = target.with_name(f"{stem} ({index}){suffix}")
        relative = relative.with_name(target.name)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".upload-", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return relative.as_posix()


def upload_path(input_dir: Path, asset: AssetRecord) -> Path | None:
    """The file behind an uploaded asset, or None if it is gone."""
    try:
        path = safe_join(input_dir, asset.location)
    except UnsafePathError:
        return None
    return path if path.is_file() else None


def output_entries(outputs: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(node id, file reference) for every saved output file (`type: output`) in UI outputs."""
    found = []
    for node_id, ui in outputs.items():
        if not isinstance(ui, dict):
            continue
        for value in ui.values():
            if not isinstance(value, list):
                continue
            for item in value:
                if (isinstance(item, dict) and isinstance(item.get("filename"), str) and item["filename"]
                        and item.get("type", "output") == "output"):
                    found.append((str(node_id), item))
    return found


def output_key(item: dict[str, Any]) -> str:
    subfolder = str(item.get("subfolder") or "")
    return f"{subfolder}/{item['filename']}" if subfolder else str(item["filename"])


def store_key(output_store: OutputStore, job_id: str, relative: str) -> str:
    """The OutputStore's key for a job's output (S3 prefixes it with the job; local files not)."""
    key_for = getattr(output_store, "key_for", None)
    return str(key_for(job_id, relative)) if callable(key_for) else relative


def output_asset_id(job_id: str, key: str) -> str:
    return str(uuid.uuid5(OUTPUT_NAMESPACE, f"{job_id}/{key}"))


def output_assets(
    job: JobRecord, outputs: dict[str, Any], assets: AssetStore, output_store: OutputStore, settings: Settings,
) -> list[AssetRecord]:
    """The job's output files as assets, minted (size and hash computed) where new. A file
    whose bytes cannot be read yet is left out (the job's outputs stay authoritative)."""
    known = {a.id: a for a in assets.for_job(job.id)}
    records = []
    for node_id, item in output_entries(outputs):
        key = output_key(item)
        asset_id = output_asset_id(job.id, key)
        record = known.get(asset_id)
        if record is None:
            record = _mint_output(job, node_id, key, asset_id, assets, output_store, settings)
        if record is not None:
            records.append(record)
    return records


def _mint_output(
    job: JobRecord, node_id: str, key: str, asset_id: str, assets: AssetStore, output_store: OutputStore,
    settings: Settings,
) -> AssetRecord | None:
    try:
        local = safe_join(settings.output_dir, key)
    except UnsafePathError:
        return None
    try:
        if local.is_file():
            size, digest = local.stat().st_size, blake3_path(local)
        else:  # written by a worker on another host: read it back from the OutputStore
            data = output_store.get(store_key(output_store, job.id, key))
            size, digest = len(data), blake3_hex(data)
    except Exception as exc:  # not there (yet): the next read tries again
        log.debug("output %s of job %s is not readable: %s", key, job.id, exc)
        return None
    name = key.rsplit("/", 1)[-1]
    record = AssetRecord(
        id=asset_id, hash=digest, size=size, content_type=guess_content_type(name), file_path=key,
        kind="output", location=key, job_id=job.id, node_id=node_id, created_at=job.finished_at or job.created_at,
        expires_at=job.expires_at,
    )
    return assets.put(record)
