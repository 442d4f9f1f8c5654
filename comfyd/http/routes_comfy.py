"""ComfyUI's HTTP API and websocket, with ComfyUI's request and response shapes.

Every route here is also served under /api (ComfyUI's newer frontend uses that prefix). All of
them need an API key when keys are configured; POST /prompt and uploads are rate limited.
"""

from __future__ import annotations

import mimetypes
import os
import platform
import sys
from typing import Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from comfyd.engine.interfaces import JobRecord, JobStatus
from comfyd.engine.job_views import history_entry, in_history, queue_entry
from comfyd.engine.jobs import SubmitResult
from comfyd.http.errors import ApiError, bad_request, not_found
from comfyd.http.jsonsafe import SafeJSONResponse as JSONResponse
from comfyd.http.jsonsafe import render_robustly
from comfyd.http.request_models import (
    ERROR_RESPONSES,
    FreeBody,
    InterruptBody,
    PromptBody,
    QueueBody,
    json_body,
)
from comfyd.http.state import AppState, get_state, json_object
from comfyd.safepath import UnsafePathError


def require_key(request: Request) -> str:
    """Dependency: the caller's identity; 401/403 when keys are configured and not presented."""
    state = get_state(request)
    host = request.client.host if request.client else "unknown"
    return state.authenticate(request.headers, host)


router = APIRouter(dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)


# ---- prompts and queue ----------------------------------------------------------------------


@router.post("/prompt", openapi_extra=json_body(PromptBody))
async def post_prompt(request: Request, principal: str = Depends(require_key)) -> JSONResponse:
    state = get_state(request)
    state.check_rate(principal)
    body = await json_object(request)
    if "prompt" not in body:
        raise bad_request("the body must have a 'prompt' (an API-format workflow)", {"location": "prompt"})
    def accept() -> SubmitResult:  # validate and store in one worker-thread hop
        return state.submit(state.job_from_body(body, source="prompt"))

    result = await run_in_threadpool(accept)
    return JSONResponse({"prompt_id": result.job.id, "number": result.job.number, "node_errors": {}})


@router.get("/prompt")
async def get_prompt(request: Request) -> dict[str, Any]:
    state = get_state(request)
    remaining = await run_in_threadpool(state.manager.queue_remaining)
    return {"exec_info": {"queue_remaining": remaining}}


def _queue_view(state: AppState) -> dict[str, Any]:
    store = state.services.job_store
    running = store.list(status={JobStatus.RUNNING}, limit=1000)
    pending = store.list(status={JobStatus.QUEUED}, limit=100_000)
    pending.sort(key=lambda j: (-j.priority, j.number))
    running.sort(key=lambda j: j.number)
    return {
        "queue_running": [_queue_item(state, j) for j in running],
        "queue_pending": [_queue_item(state, j) for j in pending],
    }


def _queue_item(state: AppState, job: JobRecord) -> list[Any]:
    return render_robustly(job, lambda j: queue_entry(j, state.output_nodes(j)),
                           lambda j: [j.number, j.id, {}, {}, []])


def _history_item(state: AppState, job: JobRecord) -> dict[str, Any]:
    """A history entry that a malformed stored record cannot turn into a 500."""
    def minimal(j: JobRecord) -> dict[str, Any]:
        return {"prompt": [j.number, j.id, {}, {}, []], "outputs": {},
                "status": {"status_str": "error", "completed": False, "messages": []}, "meta": {}}

    return render_robustly(job, lambda j: history_entry(j, state.output_nodes(j)), minimal)


@router.get("/queue")
async def get_queue(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_queue_view, get_state(request))


def _id_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"'{key}' must be a list of prompt ids (strings)", {"location": key})
    return value


@router.post("/queue", response_class=Response, openapi_extra=json_body(QueueBody))
async def post_queue(request: Request) -> Response:
    state = get_state(request)
    body = await json_object(request)

    def apply() -> None:
        if body.get("clear"):
            for job in state.services.job_store.list(status={JobStatus.QUEUED}, limit=100_000):
                state.manager.cancel(job.id)
        if "delete" in body:
            for job_id in _id_list(body, "delete"):
                job = state.services.job_store.get(job_id)
                if job is not None and job.status is JobStatus.QUEUED:
                    state.manager.cancel(job_id)

    await run_in_threadpool(apply)
    return Response(status_code=200)


@router.post("/interrupt", response_class=Response, openapi_extra=json_body(InterruptBody, required=False))
async def post_interrupt(request: Request) -> Response:
    state = get_state(request)
    body = await json_object(request, required=False)
    prompt_id = body.get("prompt_id")
    if prompt_id is not None and not isinstance(prompt_id, str):
        raise bad_request("'prompt_id' must be a string", {"location": "prompt_id"})
    state.manager.interrupt(prompt_id)
    return Response(status_code=200)


@router.post("/free", response_class=Response, openapi_extra=json_body(FreeBody, required=False))
async def post_free(request: Request, principal: str = Depends(require_key)) -> Response:
    state = get_state(request)
    state.check_rate(principal)  # unloading models makes the next jobs reload them: not free
    body = await json_object(request, required=False)
    for key in ("unload_models", "free_memory"):
        if key in body and not isinstance(body[key], bool):
            raise bad_request(f"'{key}' must be true or false", {"location": key})
    runtime = state.runtime_if_ready()
    if runtime is not None:
        await run_in_threadpool(runtime.free, bool(body.get("unload_models")), bool(body.get("free_memory")))
    return Response(status_code=200)


# ---- history ----------------------------------------------------------------------------------


def _history(state: AppState, max_items: int | None, offset: int) -> dict[str, Any]:
    limit = state.settings.history_max_items
    jobs = state.services.job_store.list(
        status={JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.TIMED_OUT}, limit=limit
    )
    jobs = [j for j in jobs if in_history(j)]  # newest first
    jobs = jobs[offset:]
    if max_items is not None:
        jobs = jobs[:max_items]
    jobs.reverse()  # ComfyUI lists history oldest first
    return {j.id: _history_item(state, j) for j in jobs}


@router.get("/history")
async def get_history(
    request: Request,
    max_items: int | None = Query(None, ge=0),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    return await run_in_threadpool(_history, get_state(request), max_items, offset)


@router.get("/history/{prompt_id}")
async def get_history_item(request: Request, prompt_id: str) -> dict[str, Any]:
    state = get_state(request)
    job = await run_in_threadpool(state.services.job_store.get, prompt_id)
    if job is None or not in_history(job):
        return {}  # ComfyUI: an unknown (or unfinished) prompt has no history yet
    return {job.id: _history_item(state, job)}


@router.post("/history", response_class=Response, openapi_extra=json_body(QueueBody))
async def post_history(request: Request) -> Response:
    state = get_state(request)
    body = await json_object(request)

    def apply() -> None:
        store = state.services.job_store
        if body.get("clear"):
            for job in store.list(status={JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED,
                                          JobStatus.TIMED_OUT}, limit=1_000_000):
                store.delete(job.id)
        if "delete" in body:
            for job_id in _id_list(body, "delete"):
                job = store.get(job_id)
                if job is not None and job.status.terminal:
                    store.delete(job_id)

    await run_in_threadpool(apply)
    return Response(status_code=200)


# ---- nodes, models, system --------------------------------------------------------------------


@router.get("/object_info")
async def object_info(request: Request) -> dict[str, Any]:
    state = get_state(request)
    runtime = await run_in_threadpool(state.runtime)
    return await run_in_threadpool(runtime.registry.object_info, runtime.env)


@router.get("/object_info/{node_class}")
async def object_info_one(request: Request, node_class: str) -> dict[str, Any]:
    state = get_state(request)
    runtime = await run_in_threadpool(state.runtime)
    cls = runtime.registry.get(node_class)
    if cls is None:
        return {}  # ComfyUI answers an unknown class with an empty object
    return {node_class: await run_in_threadpool(cls.schema.object_info, runtime.env)}


def _model_folders() -> list[str]:
    from comfyd.models.paths import MODEL_FOLDERS

    return list(MODEL_FOLDERS)


def _list_models(state: AppState, folder: str) -> list[str]:
    runtime = state.runtime()
    models = runtime.env.models
    if models is None:
        return []
    return list(models.list_files(folder))


@router.get("/models")
async def get_models(request: Request) -> list[str]:
    return _model_folders()


@router.get("/models/{folder}")
async def get_model_files(request: Request, folder: str) -> list[str]:
    if folder not in _model_folders():
        raise not_found(f"unknown model folder {folder!r}; known: {', '.join(_model_folders())}")
    return await run_in_threadpool(_list_models, get_state(request), folder)


@router.get("/embeddings")
async def get_embeddings(request: Request) -> list[str]:
    names = await run_in_threadpool(_list_models, get_state(request), "embeddings")
    return [os.path.splitext(n)[0] for n in names]


@router.get("/extensions")
async def get_extensions(request: Request) -> list[str]:
    """The front-end scripts of loaded custom-node packs (their WEB_DIRECTORY), as ComfyUI lists them."""
    from comfyd.compat.web import extension_scripts

    return await run_in_threadpool(extension_scripts, get_state(request).settings)


@router.get("/extensions/{pack}/{path:path}")
async def get_extension_file(request: Request, pack: str, path: str) -> Response:
    """A file of a pack's WEB_DIRECTORY: served as a static file, never executed by comfyd."""
    from comfyd.compat.web import extension_file

    try:
        file = await run_in_threadpool(extension_file, get_state(request).settings, pack, path)
    except UnsafePathError as exc:
        raise bad_request(str(exc)) from None
    if file is None:
        raise not_found(f"no extension file {pack}/{path}")
    media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    if file.suffix == ".js":
        media_type = "application/javascript"
    return FileResponse(file, media_type=media_type)


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _system_stats(state: AppState) -> dict[str, Any]:
    from comfyd import __version__

    ram_total, ram_free = _memory()
    # Reported only once the executor is built: until then the set-up thread may be half way
    # through importing torch (a partially initialised module without `cuda`). Never imported here.
    torch = sys.modules.get("torch") if state.runtime_if_ready() is not None else None
    devices: list[dict[str, Any]] = []
    if torch is not None and _cuda_available(torch):
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            devices.append({
                "name": f"cuda:{index} {torch.cuda.get_device_name(index)}", "type": "cuda", "index": index,
                "vram_total": total, "vram_free": free,
                "torch_vram_total": torch.cuda.memory_reserved(index),
                "torch_vram_free": torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index),
            })
    else:
        devices.append({"name": "cpu", "type": "cpu", "index": None, "vram_total": ram_total, "vram_free": ram_free,
                        "torch_vram_total": ram_total, "torch_vram_free": ram_free})
    runtime = state.runtime_if_ready()
    models = getattr(runtime.env, "models", None) if runtime is not None else None
    return {
        "system": {
            "os": os.name,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": f"comfyd-{__version__}",
            "python_version": sys.version,
            "pytorch_version": getattr(torch, "__version__", None),
            "embedded_python": False,
            "argv": sys.argv,
            "platform": platform.platform(),
        },
        "devices": devices,
        "comfyd": {
            "version": __version__,
            "jobs_running": len(state.manager.running_jobs()),
            "queue_depth": state.services.queue.depth(),
            "max_concurrent_jobs": state.settings.max_concurrent_jobs,
            "models": models.stats() if models is not None and hasattr(models, "stats") else None,
        },
    }


def _cuda_available(torch: Any) -> bool:
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken or partial torch: report the CPU
        return False


@router.get("/system_stats")
async def system_stats(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_system_stats, get_state(request))


# ---- websocket ----------------------------------------------------------------------------------

# Not under `router`: a websocket handshake cannot use the HTTP dependency (auth is checked inside).
ws_router = APIRouter()


@ws_router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    """ComfyUI's event socket. With API keys configured the handshake must carry the key
    (Authorization / X-API-Key header, or `?token=` for browsers); otherwise it is refused
    with HTTP 401/403 before the upgrade."""
    state: AppState = websocket.app.state.comfyd
    host = websocket.client.host if websocket.client else "unknown"
    try:
        state.authenticate(websocket.headers, host, websocket.query_params)
    except ApiError as err:
        await _deny(websocket, err)
        return
    client_id = websocket.query_params.get("clientId") or None
    if client_id is not None and len(client_id) > 256:
        await _deny(websocket, bad_request("clientId is longer than 256 characters"))
        return
    if not state.hub.try_admit():
        await _deny(websocket, ApiError(503, "ServiceUnavailable", f"too many websocket connections "
                                        f"(limit {state.hub.max_connections}); retry later",
                                        headers={"Retry-After": "5"}))
        return
    try:
        await _serve_socket(websocket, state, client_id)
    finally:
        state.hub.release()


async def _serve_socket(websocket: WebSocket, state: AppState, client_id: str | None) -> None:
    await websocket.accept()
    hello: list[tuple[str, dict[str, Any]]] = [
        ("status", {"status": {"exec_info": {"queue_remaining": state.manager.queue_remaining()}}})
    ]
    if client_id:  # a reconnecting client learns which node of its job is running
        for job in state.manager.running_jobs():
            if job.client_id == client_id:
                current = state.services.job_store.get(job.id)
                node = (current.progress if current else {}).get("node")
                # A null node means "finished" to every ComfyUI client: never sent here. A job
                # that has reported no node yet gets no executing message (as in ComfyUI).
                if node is not None:
                    hello.append(("executing", {"node": node, "display_node": node, "prompt_id": job.id}))
        missed_ends = getattr(websocket.app.state, "comfyd_missed_ends", None)
        if missed_ends is not None:  # jobs that ended before this client's socket opened
            hello.extend(missed_ends.take(client_id))
    await state.hub.serve(websocket, client_id, hello)


async def _deny(websocket: WebSocket, err: ApiError) -> None:
    try:
        await websocket.send_denial_response(JSONResponse(err.body(), status_code=err.status, headers=err.headers))
    except RuntimeError:  # server without the denial-response extension: plain close (HTTP 403)
        await websocket.close(code=1008, reason=err.message[:120])
