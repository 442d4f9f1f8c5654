"""Workflow formats comfyd accepts besides the API prompt: ComfyUI's UI format, and workflows
embedded in PNG / WEBP files."""

from comfyd.workflow_formats.ui_graph import UiFormatError, is_ui_workflow
from comfyd.workflow_formats.ui_to_api import Conversion, UnknownNode, ui_to_api

__all__ = [
    "Conversion",
    "UiFormatError",
    "UnknownNode",
    "api_prompt_from_ui",
    "ensure_api_format",
    "is_ui_workflow",
    "ui_to_api",
]


def api_prompt_from_ui(workflow: dict, registry: object | None = None) -> dict:
    """The API prompt of a UI-format workflow, for the edges that run it.

    Raises WorkflowParseError naming each node class comfyd does not know (and its pack), or
    what is broken in the workflow's structure.
    """
    from comfyd.engine.errors import WorkflowParseError
    from comfyd.workflow_formats.layouts import registry_layouts

    try:
        conversion = ui_to_api(workflow, registry_layouts(registry))
    except UiFormatError as exc:
        raise WorkflowParseError(f"Invalid UI workflow: {exc}", str(exc)) from None
    if conversion.unknown_nodes:
        lines = [f"node {u.node_id}: {u.message()}" for u in conversion.unknown_nodes]
        raise WorkflowParseError(
            "The workflow uses node classes comfyd does not have: "
            + ", ".join(sorted({u.class_type for u in conversion.unknown_nodes})),
            "; ".join(lines),
        )
    if not conversion.prompt:
        raise WorkflowParseError("Workflow has no nodes", "the UI workflow holds only notes, reroutes or muted nodes")
    return conversion.prompt


def ensure_api_format(body: dict, registry: object | None = None) -> dict:
    """`body` with a UI-format workflow (bare, or as the `prompt` of a wrapped request) replaced
    by its API prompt; any other body unchanged. For edges that edit a workflow's nodes (seed
    randomising, `--set`, prompt filling) before it is parsed."""
    if is_ui_workflow(body):
        return api_prompt_from_ui(body, registry)
    if isinstance(body, dict) and is_ui_workflow(body.get("prompt")):
        return {**body, "prompt": api_prompt_from_ui(body["prompt"], registry)}
    return body
