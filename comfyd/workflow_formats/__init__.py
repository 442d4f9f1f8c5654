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


# What a user can always do instead of a server-side conversion.
EXPORT_HINT = "or export the workflow from ComfyUI with 'Save (API Format)'"


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
        raise WorkflowParseError(f"Invalid UI workflow: {exc}", f"{exc}; {EXPORT_HINT}") from None
    from comfyd.workflow_formats.layouts import pack_for

    if registry is None:
        from comfyd.engine.schema import REGISTRY

        registry = REGISTRY
    unknown = list(conversion.unknown_nodes)
    listed = {u.node_id for u in unknown}
    # Nodes ComfyUI's table could lay out but comfyd cannot run are unknown to comfyd as well.
    for node_id, node in conversion.prompt.items():
        if node_id not in listed and registry.get(node["class_type"]) is None:  # type: ignore[attr-defined]
            unknown.append(UnknownNode(node_id, node["class_type"], pack_for(node["class_type"])))
    if unknown:
        lines = [f"node {u.node_id}: {u.message()}" for u in unknown]
        raise WorkflowParseError(
            "The workflow uses node classes comfyd does not have: " + ", ".join(sorted({u.class_type for u in unknown})),
            "; ".join(lines) + f" ({EXPORT_HINT})",
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
