"""The bodies validation answers with: ComfyUI's node_errors entries and its 400 body."""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING, Any

from comfyd.engine.events import full_type_name
from comfyd.engine.graph import Graph
from comfyd.engine.topo import sort_ids, upstream_closure

if TYPE_CHECKING:
    pass


# --------------------------------------------------------------------------------------------
# Body shapes
# --------------------------------------------------------------------------------------------


def input_error(error_type: str, message: str, details: str, input_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": error_type,
        "message": message,
        "details": details,
        "extra_info": {"input_name": input_name, **extra},
    }


def exception_error(input_name: str, exc: Exception) -> dict[str, Any]:
    return {
        "type": "exception_during_validation",
        "message": "Exception when validating node",
        "details": str(exc),
        "extra_info": {
            "input_name": input_name,
            "exception_message": str(exc),
            "exception_type": full_type_name(type(exc)),
            "traceback": traceback.format_tb(exc.__traceback__),
        },
    }


def prompt_error(
    error_type: str, message: str, details: str, extra_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "error": {"type": error_type, "message": message, "details": details, "extra_info": extra_info or {}},
        "node_errors": {},
    }


def failed_validation_body(
    graph: Graph,
    deps: dict[str, list[str]],
    outputs: list[str],
    targets: list[str],
    errors: dict[str, list[dict[str, Any]]],
) -> dict[str, Any]:
    closures = {t: upstream_closure(deps, [t]) for t in targets}
    node_errors: dict[str, Any] = {}
    for node_id in sort_ids(errors):
        dependents = [o for o in outputs if node_id in closures[o]]
        if not dependents:  # reached only through the followed node_id, which is no output node
            dependents = [t for t in targets if node_id in closures[t]]
        node_errors[node_id] = {
            "errors": errors[node_id],
            "dependent_outputs": dependents,
            "class_type": graph.nodes[node_id].class_type,
        }
    # As ComfyUI: the top-level details list the failing outputs' own errors only.
    details = "\n".join(f"{e['message']}: {e['details']}" for o in outputs for e in errors.get(o, []))
    body = prompt_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
    body["node_errors"] = node_errors
    return body
