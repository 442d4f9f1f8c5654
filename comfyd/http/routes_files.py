"""ComfyUI's file routes: GET /view, POST /upload/image and /upload/mask (also under /api).

Outputs and inputs stored by another host of a split deployment are fetched from the shared
store (comfyd.http.shared_files); uploads are checked (comfyd.http.uploads) before they are kept.
"""

from __future__ import annotations

import io
import json
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from comfyd.engine.job_outputs import content_type
from comfyd.http.errors import ApiError, bad_request, not_found
from comfyd.http.request_models import (
    ERROR_RESPONSES,
    UploadForm,
    multipart_body,
)
from comfyd.http.routes_comfy import require_key
from comfyd.http.shared_files import fetch_shared_input, share_upload, shared_output
from comfyd.http.state import AppState, get_state
from comfyd.http.uploads import check_image, looks_like_image, store_upload, unsafe_path_error
from comfyd.safepath import UnsafePathError, safe_filename, safe_join

FILE_TYPES = ("output", "input", "temp")

router = APIRouter(dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)


def _file_dir(state: AppState, file_type: str) -> Path:
    if file_type not in FILE_TYPES:
        raise bad_request(f"type must be one of {', '.join(FILE_TYPES)}; got {file_type!r}", {"location": "type"})
    settings = state.settings
    return Path({"output": settings.output_dir, "input": settings.input_dir, "temp": settings.temp_dir}[file_type])


@router.get("/view")
async def get_view(
    request: Request,
    filename: str | None = Query(None),
    subfolder: str = Query(""),
    type: str = Query("output"),
) -> Response:
    if not filename:
        raise bad_request("query parameter 'filename' is required", {"location": "filename"})
    state = get_state(request)
    base = _file_dir(state, type)
    try:
        path = safe_join(base, subfolder, filename)
    except UnsafePathError as exc:
        raise unsafe_path_error(exc, "subfolder/filename") from None
    media_type = view_media_type(path.name)
    if not path.is_file() and type == "output":  # stored by a worker on another host
        data = await run_in_threadpool(shared_output, state, subfolder, filename)
        if data is not None:
            return bytes_response(data, media_type, request.headers.get("range"),
                                  {"Content-Disposition": f'filename="{path.name}"'})
    elif not path.is_file() and type == "input":  # uploaded through another host
        await run_in_threadpool(fetch_shared_input, state, subfolder, filename, path)
    if not path.is_file():
        raise not_found(f"no {type} file {filename!r} in subfolder {subfolder!r}")
    # FileResponse answers Range requests itself (206 + Content-Range, 416 past the end), which
    # video players and browsers' <video> elements rely on to seek.
    return FileResponse(path, media_type=media_type, headers={"Content-Disposition": f'filename="{path.name}"'})


def view_media_type(name: str) -> str:
    """Media outputs from comfyd's fixed table (the same on every host), else the system's guess."""
    known = content_type(name)
    if known != "application/octet-stream":
        return known
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def bytes_response(data: bytes, media_type: str, range_header: str | None, headers: dict[str, str]) -> Response:
    """`data` whole, or the one byte range asked for (206), or 416 for a range outside it. Like
    FileResponse: a malformed or multi-range header is answered with the whole body."""
    size = len(data)
    headers = {**headers, "Accept-Ranges": "bytes"}
    match = _RANGE.match(range_header.strip()) if range_header else None
    if match is None or match.group(1) == match.group(2) == "":
        return Response(data, media_type=media_type, headers=headers)
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        start, end = max(0, size - int(last)), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
    headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Response(data[start:end + 1], status_code=206, media_type=media_type, headers=headers)


@dataclass
class _Upload:
    data: bytes
    filename: str
    directory: Path
    file_type: str
    subfolder: str
    overwrite: bool
    original_ref: str | None


async def _read_upload(request: Request, state: AppState, *, images_only: bool) -> _Upload:
    """The multipart body shared by /upload/image and /upload/mask, checked for safe paths."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise ApiError(415, "UnsupportedMediaType", "upload as multipart/form-data with a file field 'image'")
    async with request.form(max_files=1, max_fields=16) as form:
        image = form.get("image")
        if not isinstance(image, UploadFile):
            raise bad_request("multipart field 'image' (a file) is required", {"location": "image"})
        file_type = str(form.get("type") or "input")
        subfolder = str(form.get("subfolder") or "")
        overwrite = str(form.get("overwrite") or "").lower() in ("true", "1", "yes")
        original_ref = form.get("original_ref")
        try:
            filename = safe_filename(image.filename or "")
        except UnsafePathError as exc:
            raise unsafe_path_error(exc, "image filename") from None
        data = await image.read()
    base = _file_dir(state, file_type)
    try:
        directory = safe_join(base, subfolder)
    except UnsafePathError as exc:
        raise unsafe_path_error(exc, "subfolder") from None
    if images_only or looks_like_image(data, filename):  # ComfyUI stores other files as they are
        await run_in_threadpool(check_image, data, state.settings.max_image_pixels, filename,
                                state.settings.max_image_frame_pixels)
    ref = original_ref if isinstance(original_ref, str) else None
    return _Upload(data, filename, directory, file_type, subfolder, overwrite, ref)


@router.post("/upload/image", openapi_extra=multipart_body(UploadForm))
async def upload_image(request: Request, principal: str = Depends(require_key)) -> dict[str, Any]:
    state = get_state(request)
    state.check_rate(principal)
    upload = await _read_upload(request, state, images_only=False)
    name = await run_in_threadpool(store_upload, upload.directory, upload.filename, upload.data, upload.overwrite)
    await run_in_threadpool(share_upload, state, upload.file_type, upload.subfolder, name, upload.data)
    return {"name": name, "subfolder": upload.subfolder, "type": upload.file_type}


_ANNOTATED = re.compile(r"^(?P<name>.*) \[(?P<type>input|output|temp)\]$")


def _original_path(state: AppState, original_ref: str | None) -> Path:
    """The image a mask applies to: `original_ref` is JSON {filename, subfolder?, type?}, and
    the filename may carry ComfyUI's " [output]"-style annotation (which then names the folder)."""
    if original_ref is None:
        raise bad_request("multipart field 'original_ref' (JSON: filename, subfolder, type) is required",
                          {"location": "original_ref"})
    try:
        ref = json.loads(original_ref)
    except ValueError as exc:
        raise bad_request(f"original_ref is not JSON: {exc}", {"location": "original_ref"}) from None
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str) or not ref["filename"]:
        raise bad_request("original_ref must be a JSON object with a 'filename'", {"location": "original_ref"})
    filename, file_type = ref["filename"], str(ref.get("type") or "output")
    match = _ANNOTATED.match(filename)
    if match:
        filename, file_type = match["name"], match["type"]
    try:
        directory = safe_join(_file_dir(state, file_type), str(ref.get("subfolder") or ""))
        path = safe_join(directory, safe_filename(filename))
    except UnsafePathError as exc:
        raise unsafe_path_error(exc, "original_ref") from None
    if not path.is_file() and file_type == "input":  # uploaded through another host
        fetch_shared_input(state, str(ref.get("subfolder") or ""), safe_filename(filename), path)
    if not path.is_file():
        raise not_found(f"original_ref: no image {filename!r} in the {file_type} folder")
    return path


def _apply_mask(original: Path, mask_data: bytes) -> bytes:
    """The original image with the mask's alpha channel, its PNG text chunks kept (as ComfyUI)."""
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    with Image.open(original) as source, Image.open(io.BytesIO(mask_data)) as mask:
        metadata = PngInfo()
        for key, value in getattr(source, "text", {}).items():
            metadata.add_text(key, value)
        composed = source.convert("RGBA")
        alpha = mask.convert("RGBA").getchannel("A")
        if alpha.size != composed.size:
            raise bad_request(
                f"mask is {alpha.size[0]}x{alpha.size[1]} but the original image is "
                f"{composed.size[0]}x{composed.size[1]}", {"location": "image"},
            )
        composed.putalpha(alpha)
        out = io.BytesIO()
        composed.save(out, format="PNG", compress_level=4, pnginfo=metadata)
        return out.getvalue()


@router.post("/upload/mask", openapi_extra=multipart_body(UploadForm))
async def upload_mask(request: Request, principal: str = Depends(require_key)) -> dict[str, Any]:
    """ComfyUI's mask editor: store the original image with the uploaded mask's alpha."""
    state = get_state(request)
    state.check_rate(principal)
    upload = await _read_upload(request, state, images_only=True)
    original = await run_in_threadpool(_original_path, state, upload.original_ref)
    composed = await run_in_threadpool(_apply_mask, original, upload.data)
    name = await run_in_threadpool(store_upload, upload.directory, upload.filename, composed, upload.overwrite)
    await run_in_threadpool(share_upload, state, upload.file_type, upload.subfolder, name, composed)
    return {"name": name, "subfolder": upload.subfolder, "type": upload.file_type}
