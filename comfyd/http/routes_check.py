"""POST /v1/check: `comfyd check` on the server. Validates without queueing anything.

The body is a workflow in any accepted form (API, graph form, UI), or `{"workflow": ...}`.
The answer is always 200 with the report (`ok` says whether the job would run); a body that
is not JSON or not an object gets 400.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from comfyd.http.errors import bad_request
from comfyd.http.request_models import ERROR_RESPONSES
from comfyd.http.routes_comfy import require_key
from comfyd.http.state import get_state, json_object

router = APIRouter(dependencies=[Depends(require_key)], responses=ERROR_RESPONSES)


@router.post("/v1/check")
async def check(request: Request) -> JSONResponse:
    state = get_state(request)
    body: dict[str, Any] = await json_object(request)
    if set(body) == {"workflow"} or (set(body) <= {"workflow", "device_memory_gib"} and "workflow" in body):
        workflow = body["workflow"]
        if not isinstance(workflow, dict):
            raise bad_request("'workflow' must be a JSON object", {"location": "workflow"})
    else:
        workflow = body
    memory_gib = body.get("device_memory_gib")
    if memory_gib is not None and (not isinstance(memory_gib, int | float) or memory_gib <= 0):
        raise bad_request("'device_memory_gib' must be a positive number", {"location": "device_memory_gib"})

    def run() -> dict[str, Any]:
        from comfyd.check import check_workflow, device_memory_bytes

        runtime = state.runtime()
        memory = int(memory_gib * 2**30) if memory_gib else device_memory_bytes(state.settings)
        try:
            report = check_workflow(workflow, state.settings, registry=runtime.registry, device_memory=memory)
        except RecursionError:
            raise bad_request("the workflow nests values too deeply") from None
        return report.as_json()

    return JSONResponse(await run_in_threadpool(run))
