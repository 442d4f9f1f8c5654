"""Comfy API v2 assets: upload (blake3, dedup), mint from a hash, probe by hash, read, delete,
and the bytes (Range; a 302 to a presigned/CloudFront URL for outputs kept in S3)."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from comfyd.engine.assets import AssetRecord
from comfyd.engine.interfaces import JobStatus
from comfyd.http.request_models import V2_RESPONSES
from comfyd.http.routes_comfy import require_key
from comfyd.http.state import AppState, get_state, json_object
from comfyd.http.uploads import check_image
from comfyd.http.v2.asset_files import (
    IMAGE_EXTS,
    blake3_hex,
    guess_content_type,
    is_blake3,
    place_upload,
    store_key,
    upload_path,
)
from comfyd.http.v2.errors import V2Error, invalid, not_found
from comfyd.http.v2.routes_jobs import idempotency_key
from comfyd.http.v2.service import V2Service, base_url, get_v2
from comfyd.http.v2.views import asset_view
from comfyd.safepath import UnsafePathError, safe_join

router = APIRouter(prefix="/api/v2", responses=V2_RESPONSES)
MIN_EXPIRES_IN, MAX_EXPIRES_IN = 60, 604800


def _owner(state: AppState, principal: str) -> str | None:
    return principal if state.keys.enabled else None


def _visible(asset: AssetRecord | None, owner: str | None) -> bool:
    return asset is not None and (owner is None or asset.owner in (None, owner))


def _file_path(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid("'file_path' is required (where the file goes, e.g. 'photo.png')", {"location": "file_path"})
    path = value.strip()
    if path.startswith("input/"):
        path = path[len("input/"):]
    if path.split("/", 1)[0] in ("models", "output", "temp"):
        raise invalid("only input files can be uploaded here (file_path under input/)", {"location": "file_path"})
    return path


def _expires(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        seconds = int(value)
    except (TypeError, ValueError):
        seconds = -1
    if not MIN_EXPIRES_IN <= seconds <= MAX_EXPIRES_IN:
        raise invalid(f"'expires_in' must be {MIN_EXPIRES_IN}-{MAX_EXPIRES_IN} seconds", {"location": "expires_in"})
    return time.time() + seconds


def _tags(values: list[Any]) -> list[str]:
    if not all(isinstance(t, str) and 0 < len(t) <= 128 for t in values) or len(values) > 64:
        raise invalid("'tags' are at most 64 strings of 1-128 characters", {"location": "tags"})
    return [str(t) for t in values]


def _same(asset: AssetRecord, file_path: str, owner: str | None) -> bool:
    return asset.file_path == file_path and asset.owner == owner


def _store_upload(state: AppState, v2: V2Service, data: bytes, digest: str, file_path: str, content_type: str,
                  tags: list[str], expires_at: float | None, owner: str | None) -> tuple[AssetRecord, bool, bool]:
    """(asset, created_new blob, new record). Dedup: the same bytes under the same name and
    owner give the existing record; the same bytes elsewhere a new record over that blob."""
    input_dir = Path(state.settings.input_dir)
    existing = [a for a in v2.assets.by_hash(digest) if a.kind == "upload" and upload_path(input_dir, a)]
    for asset in existing:
        if _same(asset, file_path, owner):
            return asset, False, False
    if existing:
        location, new_blob = existing[0].location, False
    else:
        try:
            location = place_upload(input_dir, file_path, data)
        except UnsafePathError as exc:
            raise invalid(f"file_path: {exc}", {"location": "file_path"}) from None
        new_blob = True
    record = AssetRecord(id=str(uuid.uuid4()), hash=digest, size=len(data), content_type=content_type,
                         file_path=file_path, kind="upload", location=location, tags=tags, expires_at=expires_at,
                         owner=owner)
    return v2.assets.put(record), new_blob, True


@router.post("/assets")
async def upload_asset(request: Request, principal: str = Depends(require_key)) -> JSONResponse:
    state, v2 = get_state(request), get_v2(request)
    key = idempotency_key(request)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid("upload as multipart/form-data with a 'file' part", status=415)
    state.check_rate(principal)
    async with request.form(max_files=1, max_fields=80) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise invalid("multipart part 'file' (the bytes) is required", {"location": "file"})
        file_path = _file_path(form.get("file_path") or upload.filename)
        content_type = str(form.get("content_type") or upload.content_type or guess_content_type(file_path))
        expected = form.get("expected_hash")
        tags = _tags(form.getlist("tags"))
        expires_at = _expires(form.get("expires_in"))
        data = await upload.read()
    if expected is not None and (not isinstance(expected, str) or not is_blake3(expected)):
        raise invalid("'expected_hash' must be 'blake3:' and 64 lowercase hex digits", {"location": "expected_hash"})
    scope = principal + ":assets"
    if key is not None and not await run_in_threadpool(v2.idempotency.claim, scope, key, time.time()):
        raise V2Error(422, "idempotency_key_reuse", "this Idempotency-Key was used already",
                      {"idempotency_key": key})
    try:
        digest = await run_in_threadpool(blake3_hex, data)
        if expected is not None and expected != digest:
            raise V2Error(409, "hash_mismatch", "the uploaded bytes do not hash to expected_hash",
                          {"expected_hash": expected, "actual_hash": digest})
        ext = file_path.rsplit(".", 1)[-1].lower() if "." in file_path else ""
        if ext in IMAGE_EXTS or content_type.startswith("image/"):
            await run_in_threadpool(check_image, data, state.settings.max_image_pixels, file_path,
                                    state.settings.max_image_frame_pixels)
        asset, new_blob, _ = await run_in_threadpool(_store_upload, state, v2, data, digest, file_path,
                                                     content_type, tags, expires_at, _owner(state, principal))
    except Exception:
        if key is not None:
            await run_in_threadpool(v2.idempotency.release, scope, key)
        raise
    if key is not None:
        await run_in_threadpool(v2.idempotency.bind, scope, key, asset.id)
    return JSONResponse(asset_view(asset, base_url(request), created_new=new_blob), status_code=201 if new_blob else 200)


def _blob(v2: V2Service, state: AppState, digest: str) -> AssetRecord | None:
    input_dir = Path(state.settings.input_dir)
    for asset in v2.assets.by_hash(digest):
        if asset.kind == "output" or upload_path(input_dir, asset) is not None:
            return asset
    return None


@router.head("/assets/by-hash/{digest}", dependencies=[Depends(require_key)])
async def head_by_hash(request: Request, digest: str) -> Response:
    found = is_blake3(digest) and await run_in_threadpool(_blob, get_v2(request), get_state(request), digest)
    # No body (HEAD), but the headers a JSON answer would carry, as the documented responses say.
    return Response(status_code=200 if found else 404, media_type="application/json")


@router.post("/assets/from-hash")
async def from_hash(request: Request, principal: str = Depends(require_key)) -> JSONResponse:
    state, v2 = get_state(request), get_v2(request)
    body = await json_object(request)
    digest = body.get("hash")
    if not isinstance(digest, str) or not is_blake3(digest):
        raise invalid("'hash' must be 'blake3:' and 64 lowercase hex digits", {"location": "hash"})
    tags = _tags(body.get("tags") or [])
    expires_at = _expires(body.get("expires_in"))
    owner = _owner(state, principal)

    def mint() -> tuple[AssetRecord, bool]:
        blob = _blob(v2, state, digest)
        if blob is None:
            raise V2Error(404, "blob_not_found", f"no bytes with hash {digest}")
        file_path = _file_path(body["file_path"]) if body.get("file_path") is not None else blob.file_path
        for asset in v2.assets.by_hash(digest):
            if _same(asset, file_path, owner) and asset.kind == blob.kind:
                return asset, False
        record = AssetRecord(id=str(uuid.uuid4()), hash=digest, size=blob.size, content_type=blob.content_type,
                             file_path=file_path, kind=blob.kind, location=blob.location, job_id=blob.job_id,
                             node_id=blob.node_id, tags=tags, expires_at=expires_at, owner=owner)
        return v2.assets.put(record), True

    asset, minted = await run_in_threadpool(mint)
    return JSONResponse(asset_view(asset, base_url(request), created_new=False), status_code=201 if minted else 200)


async def _asset(request: Request, asset_id: str, principal: str) -> AssetRecord:
    asset = await run_in_threadpool(get_v2(request).assets.get, asset_id)
    if not _visible(asset, _owner(get_state(request), principal)):
        raise not_found(f"no asset {asset_id!r}")
    assert asset is not None
    return asset


@router.get("/assets/{asset_id}")
async def get_asset(request: Request, asset_id: str, principal: str = Depends(require_key)) -> dict[str, Any]:
    return asset_view(await _asset(request, asset_id, principal), base_url(request))


def _in_use(state: AppState, asset_id: str) -> bool:
    for job in state.services.job_store.list(status={JobStatus.QUEUED, JobStatus.RUNNING}, limit=100_000):
        v2 = job.extra_data.get("v2")
        if isinstance(v2, dict) and asset_id in (v2.get("assets") or []):
            return True
    return False


@router.delete("/assets/{asset_id}", status_code=204)
async def delete_asset(request: Request, asset_id: str, principal: str = Depends(require_key)) -> Response:
    state, v2 = get_state(request), get_v2(request)
    await _asset(request, asset_id, principal)
    if await run_in_threadpool(_in_use, state, asset_id):
        raise V2Error(409, "asset_in_use", "a queued or running job uses this asset; delete it once the job ends")
    if not await run_in_threadpool(v2.assets.delete, asset_id):
        raise not_found(f"no asset {asset_id!r}")
    return Response(status_code=204)


@router.get("/assets/{asset_id}/content")
async def get_content(request: Request, asset_id: str, principal: str = Depends(require_key)) -> Response:
    state = get_state(request)
    asset = await _asset(request, asset_id, principal)
    name = asset.file_path.rsplit("/", 1)[-1]
    headers = {"Content-Disposition": f'attachment; filename="{name}"'} if name.isascii() and '"' not in name else {}
    if asset.kind == "upload":
        path = upload_path(Path(state.settings.input_dir), asset)
    else:
        output_store = state.services.output_store
        # Outputs in S3: a presigned (or CloudFront) URL, signed now; the client fetches the bytes
        # there. A local store's URL is a relative /view link: served here instead, with Range.
        url = await run_in_threadpool(output_store.url, store_key(output_store, asset.job_id or "", asset.location))
        if url and url.startswith(("https://", "http://")):
            return RedirectResponse(url, status_code=302)
        try:
            path = safe_join(state.settings.output_dir, asset.location)
        except UnsafePathError:
            path = None
        if path is not None and not path.is_file():
            path = None
    if path is None:
        raise V2Error(404, "output_unavailable" if asset.kind == "output" else "not_found",
                      f"the bytes of asset {asset_id!r} are no longer here")
    return FileResponse(path, media_type=asset.content_type, headers=headers)
