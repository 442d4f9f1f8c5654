"""UI-format workflow -> API-format prompt, as ComfyUI's frontend builds it (graphToPrompt).

A pure function of the workflow and a widget-layout lookup:

- `widgets_values` map onto the node's widget inputs in declaration order (required, then
  optional). A `control_after_generate` value after a seed, and an upload button's value after
  an image name, are skipped when present; a `widgets_values` object maps by name.
- Links become `[origin_id, slot]`. Reroute nodes pass their input through; a PrimitiveNode
  pushes its value into the widgets it feeds; Note and MarkdownNote are ignored.
- Muted nodes (mode 2) are dropped, and inputs that pointed at them removed; a bypassed node
  (mode 4) hands each consumer the input of its own whose type matches (the same slot first).
- Subgraphs and group nodes are expanded first (ui_graph.py).

Node classes no layout knows cannot be converted; they are collected, with the custom-node pack
that provides them where the shipped table knows it, for the caller to report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from comfyd.workflow_formats.layouts import (
    CORE_PACK,
    LAYOUT_SOURCE_VERSION,
    LayoutLookup,
    NodeLayout,
    Widget,
    pack_for,
    registry_layouts,
)
from comfyd.workflow_formats.ui_graph import (
    CONTROL_VALUES,
    UPLOAD_VALUES,
    UiFormatError,
    UiGraph,
    UiLink,
    UiNode,
    build_graph,
    is_ui_workflow,
)

MODE_MUTED = 2
MODE_BYPASSED = 4
FRONTEND_ONLY = frozenset({"Note", "MarkdownNote", "Reroute", "PrimitiveNode"})
_MAX_HOPS = 1000


@dataclass(frozen=True)
class UnknownNode:
    node_id: str
    class_type: str
    pack: str | None

    def message(self) -> str:
        if self.pack == CORE_PACK:
            return f"{self.class_type} is a built-in ComfyUI node that comfyd does not implement yet"
        where = f"; it comes from the custom-node pack {self.pack}" if self.pack else " (no known custom-node pack)"
        return f"comfyd does not know the node class {self.class_type!r}{where}"


@dataclass(frozen=True)
class ModelReference:
    """A model file a loader names, with the download details a UI workflow may carry."""

    node_id: str
    class_type: str
    input: str
    name: str
    folder: str
    url: str | None = None
    hash: str | None = None
    hash_type: str | None = None


@dataclass
class Conversion:
    prompt: dict[str, Any]
    unknown_nodes: list[UnknownNode] = field(default_factory=list)
    # properties.models entries of the workflow's nodes and its top-level `models` list.
    model_links: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def ui_to_api(workflow: dict[str, Any], layouts: LayoutLookup | None = None) -> Conversion:
    """Convert a UI-format workflow. Raises UiFormatError when its structure is broken."""
    if not is_ui_workflow(workflow):
        raise UiFormatError("not a UI-format workflow (expected 'nodes' as a list beside 'links')")
    lookup = layouts or registry_layouts()
    try:
        return _convert(workflow, lookup)
    except UiFormatError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        # A shape the checks above did not foresee (a number where a list belongs, deep inside a
        # group or subgraph definition): still the caller's error, never a crash.
        raise UiFormatError(f"malformed UI workflow ({type(exc).__name__}: {exc})") from None


def _convert(workflow: dict[str, Any], lookup: LayoutLookup) -> Conversion:
    graph = build_graph(workflow, lookup)
    result = Conversion(prompt={})
    result.model_links = _model_links(workflow, graph)
    pushed = _primitive_values(graph)
    for node in graph.nodes.values():
        if node.type in FRONTEND_ONLY or node.mode in (MODE_MUTED, MODE_BYPASSED):
            continue
        layout = lookup(node.type)
        if layout is None:
            result.unknown_nodes.append(UnknownNode(node.id, node.type, pack_for(node.type)))
            inputs: dict[str, Any] = {}
        else:
            inputs = _widget_inputs(node, layout, pushed.get(node.id, {}), result.warnings)
        for slot, entry in enumerate(node.inputs):
            source = _resolve_source(graph, node, slot)
            name = (entry.get("widget") or {}).get("name") or entry.get("name")
            if source is not None and name:
                inputs[name] = [source[0], source[1]]
        api_node: dict[str, Any] = {"inputs": inputs, "class_type": node.type}
        api_node["_meta"] = {"title": node.title or node.type}
        result.prompt[node.id] = api_node
    # Inputs that point at dropped nodes go, as the frontend removes them.
    for api_node in result.prompt.values():
        for name, value in list(api_node["inputs"].items()):
            if _is_link(value) and value[0] not in result.prompt:
                del api_node["inputs"][name]
    return result


def _is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)


def _widget_inputs(node: UiNode, layout: NodeLayout, pushed: dict[str, Any], warnings: list[str]) -> dict[str, Any]:
    values = node.widgets_values
    inputs: dict[str, Any] = {}
    if isinstance(values, dict):
        for widget in layout.widgets:
            if widget.name in values:
                inputs[widget.name] = values[widget.name]
        # VideoHelperSuite stores its widgets by name, the per-format options its frontend adds
        # (crf, pix_fmt, ...) among them; the frontend sends those too, undeclared as they are.
        links = {name for name, _type in layout.links}
        for name, value in values.items():
            if name not in inputs and name not in links and isinstance(value, str | int | float | bool):
                inputs[name] = value
    elif isinstance(values, list):
        saved = _saved_widget_order(node, layout, values)
        cursor = 0
        for widget in saved or layout.widgets:
            if cursor >= len(values):
                break
            inputs[widget.name] = values[cursor]
            cursor += 1
            if cursor < len(values) and _is_companion_value(widget, values[cursor]):
                cursor += 1
        if saved is not None:
            inputs = {k: v for k, v in inputs.items() if any(w.name == k for w in layout.widgets)}
        if cursor < len(values):
            warnings.append(
                f"node {node.id} ({node.type}): {len(values) - cursor} widget value(s) beyond the node's "
                f"layout ({layout.source}, ComfyUI {LAYOUT_SOURCE_VERSION}) ignored: saved by another version?"
            )
    for widget in layout.widgets:
        if widget.name not in inputs and widget.default is not None:
            inputs[widget.name] = widget.default
            if isinstance(values, list) and values:
                warnings.append(
                    f"node {node.id} ({node.type}): widget {widget.name!r} not saved (the node predates it); "
                    f"its default {widget.default!r} used, as the frontend does"
                )
    inputs.update({k: v for k, v in node.overrides.items() if any(w.name == k for w in layout.widgets)})
    inputs.update(pushed)
    return inputs


def _saved_widget_order(node: UiNode, layout: NodeLayout, values: list[Any]) -> list[Widget] | None:
    """The widgets the node had when it was saved, when the file says so and it differs.

    Newer frontends list every widget among a node's inputs (`{"widget": {"name": ...}}`), in
    widget order. When that list accounts for every stored value but names other widgets than
    the assumed layout (one was added or removed since), the values follow the saved list.
    """
    listed = [(e.get("widget") or {}).get("name") for e in node.inputs if e.get("widget")]
    if not listed or set(listed) == {w.name for w in layout.widgets}:
        return None
    known = {w.name: w for w in layout.widgets}
    order = [known.get(name) or Widget(str(name), "*") for name in listed]
    cursor = 0
    for widget in order:
        if cursor >= len(values):
            return None
        cursor += 1
        if cursor < len(values) and _is_companion_value(widget, values[cursor]):
            cursor += 1
    return order if cursor == len(values) else None


def _is_companion_value(widget: Widget, value: Any) -> bool:
    """The value of the frontend-only widget that follows a seed (control_after_generate; very
    old frontends stored it as a boolean) or an upload combo (the button, "image")."""
    if widget.control:
        return isinstance(value, bool) or (isinstance(value, str) and value in CONTROL_VALUES)
    return widget.upload and isinstance(value, str) and value in UPLOAD_VALUES


def _primitive_values(graph: UiGraph) -> dict[str, dict[str, Any]]:
    """node id -> {widget: value} that PrimitiveNodes feed (their first widget value)."""
    pushed: dict[str, dict[str, Any]] = {}
    for node in graph.nodes.values():
        if node.type != "PrimitiveNode" or node.mode == MODE_MUTED:
            continue
        if "value" in node.overrides:
            value = node.overrides["value"]
        elif isinstance(node.widgets_values, list) and node.widgets_values:
            value = node.widgets_values[0]
        else:
            continue
        for link in graph.links.values():
            if link.origin != node.id:
                continue
            for target_id, slot in _through_reroutes(graph, link):
                target = graph.nodes[target_id]
                entry = target.inputs[slot] if slot < len(target.inputs) else {}
                widget = (entry.get("widget") or {}).get("name")
                if widget:
                    pushed.setdefault(target_id, {})[widget] = value
    return pushed


def _through_reroutes(graph: UiGraph, link: UiLink) -> list[tuple[str, int]]:
    targets = []
    pending = [link]
    for _ in range(_MAX_HOPS):
        if not pending:
            break
        current = pending.pop()
        target = graph.nodes.get(current.target)
        if target is None:
            continue
        if target.type == "Reroute":
            pending.extend(lk for lk in graph.links.values() if lk.origin == target.id)
        else:
            targets.append((target.id, current.target_slot))
    return targets


def _resolve_source(graph: UiGraph, node: UiNode, slot: int) -> tuple[str, int] | None:
    """The (node id, output slot) that feeds `node`'s input `slot` once frontend-only nodes,
    reroutes and bypassed nodes are seen through; None when nothing real feeds it."""
    link = graph.input_link(node, slot)
    wanted = node.inputs[slot].get("type")
    for _ in range(_MAX_HOPS):
        if link is None:
            return None
        parent = graph.nodes.get(link.origin)
        if parent is None:
            raise UiFormatError(f"node {node.id}: a link comes from node {link.origin}, which is not in the workflow")
        if parent.type == "Reroute":
            link = graph.input_link(parent, 0)
        elif parent.type == "PrimitiveNode":
            return None  # its value was pushed into the widget
        elif parent.mode == MODE_BYPASSED:
            link = _bypass_input(graph, parent, link.origin_slot, wanted)
        else:
            return parent.id, link.origin_slot
    raise UiFormatError(f"node {node.id}: its input {slot} goes through a loop of reroutes or bypassed nodes")


def _bypass_input(graph: UiGraph, parent: UiNode, origin_slot: int, wanted: Any) -> UiLink | None:
    """The link into a bypassed node that stands in for its output: same slot first, then any
    input of the consumer's type."""
    order = [origin_slot] + list(range(len(parent.inputs)))
    for index in order:
        if index < len(parent.inputs) and parent.inputs[index].get("type") == wanted:
            return graph.input_link(parent, index)
    return None


def _model_links(workflow: dict[str, Any], graph: UiGraph) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for entry in workflow.get("models") or []:
        if isinstance(entry, dict) and entry.get("name"):
            found.append(dict(entry))
    for node in graph.nodes.values():
        for entry in node.properties.get("models") or []:
            if isinstance(entry, dict) and entry.get("name"):
                found.append({**entry, "node_id": node.id})
    return found


__all__ = ["Conversion", "ModelReference", "UiFormatError", "UnknownNode", "is_ui_workflow", "ui_to_api"]
