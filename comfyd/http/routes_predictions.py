"""Replicate Cog's prediction API and comfyd's /v1 endpoints (health and metrics: routes_health).

Predictions are synchronous by default: the answer waits up to `sync_wait_s` for the job to end
(200 with the final prediction), then answers 202 with the prediction as it is (poll GET
/predictions/{id}) instead of failing. `Prefer: respond-async` answers 202 at once. PUT
/predictions/{id} is idempotent: the same id again gives the existing prediction back.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import secrets
from importlib import resources
from typing import Any, Literal
from urllib.parse import unquote_to_bytes, urlparse

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.concurrency import run_in_threadpool

from comfyd.engine.interfaces import JobRecord
from comfyd.engine.job_views import COG_STATUS, prediction_view
from comfyd.http.errors import ApiError, bad_request, not_found, validation_details
from comfyd.http.jsonsafe import SafeJSONResponse as JSONResponse
from comfyd.http.jsonsafe import render_robustly
from comfyd.http.request_models import ERROR_RESPONSES, json_body
from comfyd.http.routes_comfy import require_key
from comfyd.http.state import (
    WEBHOOK_EVENTS,
    AppState,
    check_job_id,
    check_same_request,
    get_state,
    json_object,
    request_digest,
)

router = APIRouter(dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)

SEED_INPUTS = ("seed", "noise_seed")


# ---- request models ----------------------------------------------------------------------------


def _check_webhook_url(value: str | None) -> str | None:
    if value is None:
        return None
    parsed = urlparse(value)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("webhook must be an absolute http(s) URL")
    return value


class PredictionInput(BaseModel):
    """cog-comfyui's inputs that comfyd honours (unknown inputs are refused, not ignored)."""

    model_config = ConfigDict(extra="forbid")

    workflow_json: str | dict[str, Any]
    randomise_seeds: bool = False
    return_temp_files: bool = False
    force_reset_cache: bool = False
    node_id: str | None = None
    execution_mode: Literal["sequential", "parallel"] | None = None
    priority: int | None = Field(None, ge=1, le=10)


class PredictionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    input: PredictionInput
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return _check_webhook_url(value)


class GenerateRequest(BaseModel):
    """POST /v1/generate: the default text-to-image graph (or `workflow`), filled in."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(max_length=20_000)
    negative_prompt: str | None = Field(None, max_length=20_000)
    workflow: dict[str, Any] | None = None
    node_id: str = "3"
    execution_mode: Literal["sequential", "parallel"] = "sequential"
    priority: int = Field(1, ge=1, le=10)
    seed: int | None = Field(None, ge=0, le=2**64 - 1)
    width: int | None = Field(None, ge=8)
    height: int | None = Field(None, ge=8)
    steps: int | None = Field(None, ge=1, le=10_000)
    cfg: float | None = Field(None, ge=0.0, le=100.0)
    sampler: str | None = None
    scheduler: str | None = None
    batch_size: int | None = Field(None, ge=1)
    ckpt_name: str | None = None
    id: str | None = None
    webhook: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None

    @field_validator("webhook")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        return _check_webhook_url(value)


def _validated(model: type[BaseModel], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        details = validation_details(list(exc.errors()))
        first = details[0] if details else {"location": "body", "message": "invalid"}
        raise bad_request(f"{first['location']}: {first['message']}", details) from None


# ---- workflow_json ------------------------------------------------------------------------------


def decode_workflow_json(value: str | dict[str, Any]) -> dict[str, Any]:
    """cog-comfyui's workflow_json: a JSON string, a data: URI, or (here) an object."""
    if isinstance(value, dict):
        return value
    text = value.strip()
    if text.startswith(("http://", "https://")):
        raise bad_request("input.workflow_json: URLs are not fetched (the server makes no outbound requests); "
                          "send the workflow JSON itself or a data: URI", {"location": "input.workflow_json"})
    if text.startswith("data:"):
        header, sep, payload = text.partition(",")
        if not sep:
            raise bad_request("input.workflow_json: malformed data: URI (no ',')", {"location": "input.workflow_json"})
        try:
            raw = base64.b64decode(payload, validate=True) if header.endswith(";base64") else unquote_to_bytes(payload)
            text = raw.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise bad_request(f"input.workflow_json: cannot decode the data: URI ({exc})",
                              {"location": "input.workflow_json"}) from None
    try:
        workflow = json.loads(text)
    except json.JSONDecodeError as exc:
        raise bad_request(f"input.workflow_json is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                          {"location": "input.workflow_json", "line": exc.lineno, "column": exc.colno}) from None
    if not isinstance(workflow, dict):
        raise bad_request("input.workflow_json must be a JSON object (a workflow)", {"location": "input.workflow_json"})
    return workflow


def _node_table(workflow: dict[str, Any]) -> dict[str, Any]:
    """The node dict of a workflow in any accepted form (bare, {"prompt": ...}, graph form)."""
    for key in ("nodes", "prompt"):
        if isinstance(workflow.get(key), dict):
            return workflow[key]
    return workflow


def randomise_seeds(workflow: dict[str, Any]) -> None:
    for node in _node_table(workflow).values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(inputs, dict):
            continue
        for name in SEED_INPUTS:
            if isinstance(inputs.get(name), int) and not isinstance(inputs[name], bool):
                inputs[name] = secrets.randbelow(2**48)


def request_body(workflow: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A parse_workflow body carrying the caller's node_id / execution_mode / priority."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if isinstance(workflow.get("nodes"), dict) or isinstance(workflow.get("prompt"), dict):
        return {**workflow, **overrides}
    return {"prompt": workflow, **overrides}


# ---- predictions --------------------------------------------------------------------------------


def safe_prediction_view(job: JobRecord, base_url: str | None, sign: Any = None) -> dict[str, Any]:
    """prediction_view with output URLs signed now (never stored ones), robust to any stored
    record (a malformed one still gets an answer)."""
    def minimal(j: JobRecord) -> dict[str, Any]:
        return {"id": j.id, "input": {}, "output": None, "logs": "", "error": "the stored record cannot be shown",
                "status": COG_STATUS.get(j.status, "failed"), "metrics": {}}

    return render_robustly(job, lambda j: prediction_view(j, base_url, sign=sign), minimal)


def _view(job: JobRecord, request: Request) -> dict[str, Any]:
    return safe_prediction_view(job, str(request.base_url), sign=get_state(request).services.output_store.url)


def _respond(job: JobRecord, request: Request, status: int) -> JSONResponse:
    headers = {"Location": f"/predictions/{job.id}"} if status == 202 else None
    return JSONResponse(_view(job, request), status_code=status, headers=headers)


async def _submit_and_answer(
    state: AppState, request: Request, job: JobRecord, force_reset_cache: bool = False
) -> JSONResponse:
    if force_reset_cache:
        runtime = state.runtime_if_ready()
        if runtime is not None:
            await run_in_threadpool(runtime.free, False, True)
    result = await run_in_threadpool(state.submit, job)
    job = result.job
    if "respond-async" in request.headers.get("prefer", "").lower():
        return _respond(job, request, 202)
    final = await state.wait_for(job.id, state.settings.sync_wait_s)
    final = final or job
    return _respond(final, request, 200 if final.status.terminal else 202)


async def _create_prediction(request: Request, principal: str, path_id: str | None) -> JSONResponse:
    state = get_state(request)
    state.check_rate(principal)
    body = await json_object(request)
    pred: PredictionRequest = _validated(PredictionRequest, body)
    if path_id is not None and pred.id is not None and pred.id != path_id:
        raise bad_request(f"body id {pred.id!r} differs from the URL's {path_id!r}", {"location": "id"})
    job_id = path_id or pred.id
    digest = request_digest({k: v for k, v in body.items() if k != "id"})
    if job_id is not None:
        check_job_id(job_id, "id")
        existing = await run_in_threadpool(state.services.job_store.get, job_id)
        if existing is not None:  # idempotent: the same id is the same prediction (409 if not)
            check_same_request(existing, digest)
            return await _submit_and_answer(state, request, existing)
    workflow = await run_in_threadpool(_api_format, copy.deepcopy(decode_workflow_json(pred.input.workflow_json)), state)
    if pred.input.randomise_seeds:
        randomise_seeds(workflow)
    options = pred.input.model_dump(exclude={"workflow_json"}, exclude_defaults=True)
    extra: dict[str, Any] = {"prediction_input": options}
    if pred.webhook:  # checked against the address policy in job_from_body (422 naming `webhook`)
        extra["webhook"] = pred.webhook
        extra["webhook_events_filter"] = list(pred.webhook_events_filter or WEBHOOK_EVENTS)
    parse_body = request_body(workflow, {"node_id": pred.input.node_id, "execution_mode": pred.input.execution_mode,
                                         "priority": pred.input.priority})
    job = await run_in_threadpool(
        lambda: state.job_from_body(parse_body, source="prediction", job_id=job_id or _new_id(), extra_data=extra,
                                  webhook_field="webhook", digest=digest)
    )
    return await _submit_and_answer(state, request, job, pred.input.force_reset_cache)


def _api_format(workflow: dict[str, Any], state: AppState) -> dict[str, Any]:
    """A UI-format workflow converted to its API prompt (comfyd.workflow_formats); 400 if it cannot be."""
    from comfyd.engine.errors import WorkflowParseError
    from comfyd.http.errors import ComfyError
    from comfyd.workflow_formats import ensure_api_format, is_ui_workflow

    if not (is_ui_workflow(workflow) or is_ui_workflow(workflow.get("prompt"))):
        return workflow
    try:
        return ensure_api_format(workflow, state.runtime().registry)
    except WorkflowParseError as exc:
        raise ComfyError(400, exc.body()) from None


def _new_id() -> str:
    return secrets.token_hex(13)  # Cog-style opaque id


@router.post("/predictions", openapi_extra=json_body(PredictionRequest))
async def post_prediction(request: Request, principal: str = Depends(require_key)) -> JSONResponse:
    return await _create_prediction(request, principal, None)


@router.put("/predictions/{prediction_id}", openapi_extra=json_body(PredictionRequest))
async def put_prediction(prediction_id: str, request: Request, principal: str = Depends(require_key)) -> JSONResponse:
    return await _create_prediction(request, principal, prediction_id)


@router.get("/predictions/{prediction_id}")
async def get_prediction(prediction_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    job = await run_in_threadpool(state.services.job_store.get, prediction_id)
    if job is None:
        raise not_found(f"no prediction {prediction_id!r}")
    return JSONResponse(_view(job, request))


@router.post("/predictions/{prediction_id}/cancel")
async def cancel_prediction(prediction_id: str, request: Request) -> JSONResponse:
    state = get_state(request)
    job = await run_in_threadpool(state.manager.cancel, prediction_id)
    if job is None:
        raise not_found(f"no prediction {prediction_id!r}")
    return JSONResponse(_view(job, request))


# ---- /v1 -------------------------------------------------------------------------------------


def default_workflow() -> dict[str, Any]:
    return json.loads(resources.files("comfyd.workflows").joinpath("default_api.json").read_text())


def _linked_node(nodes: dict[str, Any], sampler_id: str, input_name: str) -> tuple[str, dict[str, Any]] | None:
    link = nodes[sampler_id].get("inputs", {}).get(input_name)
    if isinstance(link, list) and len(link) == 2 and str(link[0]) in nodes:
        return str(link[0]), nodes[str(link[0])]
    return None


def fill_generate_workflow(gen: GenerateRequest, checkpoints: list[str]) -> dict[str, Any]:
    """The API-format workflow for a /v1/generate request; 400 naming what does not fit."""
    workflow = copy.deepcopy(gen.workflow) if gen.workflow is not None else default_workflow()
    nodes = _node_table(workflow)
    sampler = nodes.get(gen.node_id)
    if not isinstance(sampler, dict) or not isinstance(sampler.get("inputs"), dict):
        raise bad_request(f"workflow has no node {gen.node_id!r} to fill (node_id)", {"location": "node_id"})
    inputs = sampler["inputs"]

    def set_sampler(field_name: str, names: tuple[str, ...], value: Any) -> None:
        if value is None:
            return
        for name in names:
            if name in inputs:
                inputs[name] = value
                return
        raise bad_request(f"{field_name}: node {gen.node_id} ({sampler.get('class_type')}) has no input "
                          f"{' or '.join(names)}", {"location": field_name})

    set_sampler("seed", SEED_INPUTS, gen.seed)
    set_sampler("steps", ("steps",), gen.steps)
    set_sampler("cfg", ("cfg",), gen.cfg)
    set_sampler("sampler", ("sampler_name",), gen.sampler)
    set_sampler("scheduler", ("scheduler",), gen.scheduler)

    for field_name, input_name, text in (("prompt", "positive", gen.prompt),
                                         ("negative_prompt", "negative", gen.negative_prompt)):
        if text is None:
            continue
        linked = _linked_node(nodes, gen.node_id, input_name)
        if linked is None or "text" not in linked[1].get("inputs", {}):
            raise bad_request(f"{field_name}: the {input_name} input of node {gen.node_id} is not fed by a text "
                              "encoder node with a 'text' input", {"location": field_name})
        linked[1]["inputs"]["text"] = text

    latent_fields = {"width": gen.width, "height": gen.height, "batch_size": gen.batch_size}
    if any(v is not None for v in latent_fields.values()):
        linked = _linked_node(nodes, gen.node_id, "latent_image")
        for name, value in latent_fields.items():
            if value is None:
                continue
            if linked is None or name not in linked[1].get("inputs", {}):
                raise bad_request(f"{name}: the latent_image input of node {gen.node_id} is not fed by a node with "
                                  f"a '{name}' input", {"location": name})
            linked[1]["inputs"][name] = value

    for node in nodes.values():
        node_inputs = node.get("inputs") if isinstance(node, dict) else None
        if not isinstance(node_inputs, dict) or "ckpt_name" not in node_inputs:
            continue
        if gen.ckpt_name is not None:
            node_inputs["ckpt_name"] = gen.ckpt_name
        elif gen.workflow is None and node_inputs["ckpt_name"] not in checkpoints:
            node_inputs["ckpt_name"] = _only_checkpoint(node_inputs["ckpt_name"], checkpoints)
    return workflow


def _only_checkpoint(wanted: str, checkpoints: list[str]) -> str:
    """The default graph runs on the one installed checkpoint; among several, never a guess."""
    if len(checkpoints) == 1:
        return checkpoints[0]
    if not checkpoints:  # none here (an API host of a split deployment): validation decides
        return wanted
    found = ", ".join(checkpoints[:20])
    raise bad_request(f"ckpt_name: the default graph's checkpoint {wanted!r} is not installed; choose one "
                      f"with ckpt_name (installed: {found})", {"location": "ckpt_name"})


def _checkpoints(state: AppState) -> list[str]:
    runtime = state.runtime()
    models = runtime.env.models
    return list(models.list_files("checkpoints")) if models is not None else []


@router.post("/v1/generate", openapi_extra=json_body(GenerateRequest))
async def generate(request: Request, principal: str = Depends(require_key)) -> JSONResponse:
    state = get_state(request)
    state.check_rate(principal)
    raw = await json_object(request)
    gen: GenerateRequest = _validated(GenerateRequest, raw)
    digest = request_digest({k: v for k, v in raw.items() if k != "id"})
    if gen.width is not None and gen.height is not None and gen.width * gen.height > state.settings.max_image_pixels:
        raise ApiError(413, "ImageTooLarge", f"{gen.width}x{gen.height} exceeds max_image_pixels "
                       f"{state.settings.max_image_pixels} (COMFYD_MAX_IMAGE_PIXELS raises it)",
                       {"location": "width/height"})
    if gen.id is not None:
        check_job_id(gen.id, "id")
        existing = await run_in_threadpool(state.services.job_store.get, gen.id)
        if existing is not None:
            check_same_request(existing, digest)
            return await _submit_and_answer(state, request, existing)
    checkpoints = await run_in_threadpool(_checkpoints, state)
    if gen.workflow is not None:
        gen.workflow = await run_in_threadpool(_api_format, gen.workflow, state)
    workflow = fill_generate_workflow(gen, checkpoints)
    extra: dict[str, Any] = {"prediction_input": gen.model_dump(exclude={"workflow"}, exclude_none=True)}
    if gen.webhook:  # checked against the address policy in job_from_body (422 naming `webhook`)
        extra["webhook"] = gen.webhook
        extra["webhook_events_filter"] = list(gen.webhook_events_filter or WEBHOOK_EVENTS)
    body = request_body(workflow, {"node_id": gen.node_id, "execution_mode": gen.execution_mode,
                                   "priority": gen.priority})
    job = await run_in_threadpool(
        lambda: state.job_from_body(body, source="generate", job_id=gen.id or _new_id(), extra_data=extra,
                                  webhook_field="webhook", digest=digest)
    )
    return await _submit_and_answer(state, request, job)


def _status(state: AppState, base_url: str) -> dict[str, Any]:
    store = state.services.job_store
    # A job stored as finished is not processing, though its worker may not have let go yet.
    running = [j for j in (store.get(r.id) or r for r in state.manager.running_jobs()) if not j.status.terminal]
    running.sort(key=lambda j: j.started_at or 0.0)
    current = running[-1] if running else None
    recent = store.list(limit=10)
    last_finished = next((j for j in recent if j.status.terminal), None)
    progress = None
    if current is not None:
        value, total = current.progress.get("value"), current.progress.get("max")
        progress = {
            "prediction_id": current.id,
            "node": current.progress.get("node"),
            "value": value,
            "max": total,
            "percent": round(100.0 * value / total, 1) if value is not None and total else None,
        }
    timings_of = current if current is not None and current.node_timings else last_finished
    return {
        "is_processing": bool(running),
        "current_progress": progress,
        "running": [{"id": j.id, "progress": j.progress, "started_at": j.started_at} for j in running],
        "queue_depth": state.services.queue.depth(),
        "node_executions": [
            {"prediction_id": timings_of.id, "node_id": node_id,
             "class_type": (timings_of.workflow.get(node_id) or {}).get("class_type"), "seconds": seconds}
            for node_id, seconds in timings_of.node_timings.items()
        ] if timings_of is not None else [],
        "recent_predictions": [safe_prediction_view(j, base_url, sign=state.services.output_store.url)
                               for j in recent],
    }


@router.get("/v1/status")
async def v1_status(request: Request) -> dict[str, Any]:
    return await run_in_threadpool(_status, get_state(request), str(request.base_url))
