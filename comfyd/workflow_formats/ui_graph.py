"""A UI-format workflow as a flat graph: nodes, links, and group nodes / subgraphs expanded.

ComfyUI's frontend saves `{nodes: [...], links: [...], extra, definitions}`. Links come as lists
`[id, origin_id, origin_slot, target_id, target_slot, type]` (format 0.4) or as objects (format 1
and subgraph definitions). A node whose type names a subgraph definition, or a group node
(`workflow/NAME`, `workflow>NAME`, defined in `extra.groupNodes`), is replaced by its inner
nodes, with ids `outer:inner` as the frontend gives them in the API prompt (nested subgraphs
give `a:b:c`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SUBGRAPH_INPUT_NODE = -10
SUBGRAPH_OUTPUT_NODE = -20
WIDGET_VALUE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})


class UiFormatError(ValueError):
    """The UI workflow's structure is broken (a dangling link, a bad node entry)."""


@dataclass
class UiLink:
    origin: str
    origin_slot: int
    target: str
    target_slot: int
    type: str = "*"


@dataclass
class UiNode:
    id: str
    type: str
    mode: int = 0
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    widgets_values: Any = None
    title: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    # widget name -> value set from outside the node (a subgraph's or group node's widget).
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class UiGraph:
    nodes: dict[str, UiNode] = field(default_factory=dict)
    links: dict[str, UiLink] = field(default_factory=dict)

    def input_link(self, node: UiNode, slot: int) -> UiLink | None:
        if slot >= len(node.inputs):
            return None
        key = node.inputs[slot].get("link")
        return self.links.get(key) if key is not None else None


def is_ui_workflow(body: Any) -> bool:
    """True for what ComfyUI's "Save" writes (a `nodes` list beside `links`)."""
    return isinstance(body, dict) and isinstance(body.get("nodes"), list) and "links" in body


def _slot(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UiFormatError(f"a link's slot must be a non-negative integer, not {value!r}")
    return value


def _link_tuple(raw: Any) -> tuple[Any, Any, int, Any, int, str]:
    if isinstance(raw, dict):
        fields = (raw.get("id"), raw.get("origin_id"), raw.get("origin_slot", 0), raw.get("target_id"),
                  raw.get("target_slot", 0), raw.get("type", "*"))
    elif isinstance(raw, list | tuple) and len(raw) >= 5:
        fields = (raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] if len(raw) > 5 else "*")
    else:
        raise UiFormatError(f"a link is neither a list nor an object: {str(raw)[:80]}")
    link_id, origin, origin_slot, target, target_slot, kind = fields
    for value in (link_id, origin, target):
        if not isinstance(value, int | str) or isinstance(value, bool):
            raise UiFormatError(f"a link's ids must be numbers or strings: {str(raw)[:80]}")
    return link_id, origin, _slot(origin_slot), target, _slot(target_slot), str(kind)


def _list_of_dicts(raw: Any, what: str) -> list[dict[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(e, dict) for e in raw):
        raise UiFormatError(f"{what} must be a list of objects")
    return [dict(e) for e in raw]


def _node_from_json(raw: Any, node_id: str, link_key: Any) -> UiNode:
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise UiFormatError(f"node {node_id}: each UI node needs a 'type' (a string)")
    inputs = _list_of_dicts(raw.get("inputs"), f"node {node_id}: 'inputs'")
    for entry in inputs:
        link = entry.get("link")
        if link is not None and (not isinstance(link, int | str) or isinstance(link, bool)):
            raise UiFormatError(f"node {node_id}: an input's 'link' must be a link id")
        if link is not None:
            entry["link"] = link_key(link)
        if not isinstance(entry.get("widget"), dict | None):
            raise UiFormatError(f"node {node_id}: an input's 'widget' must be an object")
        if not isinstance(entry.get("name", ""), str):
            raise UiFormatError(f"node {node_id}: an input's 'name' must be a string")
    mode = raw.get("mode") or 0
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise UiFormatError(f"node {node_id}: 'mode' must be an integer")
    widgets = raw.get("widgets_values")
    if not isinstance(widgets, list | dict | None):
        raise UiFormatError(f"node {node_id}: 'widgets_values' must be a list or an object")
    properties = raw.get("properties") or {}
    if not isinstance(properties, dict):
        raise UiFormatError(f"node {node_id}: 'properties' must be an object")
    title = raw.get("title")
    return UiNode(
        id=node_id,
        type=raw["type"],
        mode=mode,
        inputs=inputs,
        outputs=_list_of_dicts(raw.get("outputs"), f"node {node_id}: 'outputs'"),
        widgets_values=widgets,
        title=title if isinstance(title, str) else None,
        properties=properties,
    )


def build_graph(workflow: dict[str, Any], layouts: Any = None) -> UiGraph:
    """The flat graph of a UI workflow, with every subgraph and group node expanded."""
    graph = UiGraph()
    if not isinstance(workflow.get("links") or [], list):
        raise UiFormatError("'links' must be a list")
    for raw in workflow.get("links") or []:
        if raw is None:
            continue
        link_id, origin, origin_slot, target, target_slot, kind = _link_tuple(raw)
        graph.links[str(link_id)] = UiLink(str(origin), origin_slot, str(target), target_slot, kind)
    for raw in workflow["nodes"]:
        node_id = str(raw.get("id")) if isinstance(raw, dict) else "?"
        graph.nodes[node_id] = _node_from_json(raw, node_id, str)
    definitions = workflow.get("definitions") or {}
    extra = workflow.get("extra") or {}
    if not isinstance(definitions, dict) or not isinstance(extra, dict):
        raise UiFormatError("'definitions' and 'extra' must be objects")
    subgraphs = {str(s.get("id")): s for s in _list_of_dicts(definitions.get("subgraphs"), "definitions.subgraphs")}
    groups = extra.get("groupNodes") or {}
    if not isinstance(groups, dict) or not all(isinstance(g, dict) for g in groups.values()):
        raise UiFormatError("extra.groupNodes must map names to group definitions")
    for _ in range(64):  # nesting depth bound; a definition that contains itself would loop
        expandable = [n for n in graph.nodes.values() if n.type in subgraphs or _group_name(n.type) in groups]
        if not expandable:
            return graph
        for node in expandable:
            if node.type in subgraphs:
                _expand_subgraph(graph, node, subgraphs[node.type])
            else:
                _expand_group_node(graph, node, groups[_group_name(node.type)], layouts)
    raise UiFormatError("subgraphs are nested more than 64 deep (does one contain itself?)")


def _group_name(node_type: str) -> str | None:
    for prefix in ("workflow/", "workflow>"):
        if node_type.startswith(prefix):
            return node_type[len(prefix):]
    return None


def _outer_links_from(graph: UiGraph, node_id: str) -> list[UiLink]:
    return [link for link in graph.links.values() if link.origin == node_id]


def _expand_subgraph(graph: UiGraph, outer: UiNode, definition: dict[str, Any]) -> None:
    prefix = f"{outer.id}:"
    inner_links: dict[str, UiLink] = {}
    for raw in definition.get("links") or []:
        link_id, origin, origin_slot, target, target_slot, kind = _link_tuple(raw)
        inner_links[str(link_id)] = UiLink(str(origin), origin_slot, str(target), target_slot, kind)
    sub_inputs = definition.get("inputs") or []
    # The subgraph node shows a widget for each of its inputs of a widget type, in order; their
    # values are its widgets_values (a linked one keeps its slot).
    outer_widget_values: dict[str, Any] = {}
    values = outer.widgets_values if isinstance(outer.widgets_values, list) else []
    widget_inputs = [i for i in sub_inputs if str(i.get("type")) in WIDGET_VALUE_TYPES]
    for index, entry in enumerate(widget_inputs):
        if index < len(values):
            outer_widget_values[entry.get("name")] = values[index]
    if isinstance(outer.widgets_values, dict):
        outer_widget_values.update(outer.widgets_values)
    outer_inputs_by_name = {i.get("name"): i for i in outer.inputs}

    for raw in definition.get("nodes") or []:
        inner_id = prefix + str(raw.get("id"))
        node = _node_from_json(raw, inner_id, lambda key: f"{prefix}#{key}")
        node.mode = outer.mode if outer.mode in (2, 4) and node.mode == 0 else node.mode
        graph.nodes[inner_id] = node
    for key, link in inner_links.items():
        new_key = f"{prefix}#{key}"
        target = prefix + link.target
        if link.target == str(SUBGRAPH_OUTPUT_NODE):
            continue
        if link.origin == str(SUBGRAPH_INPUT_NODE):
            sub_input = sub_inputs[link.origin_slot] if link.origin_slot < len(sub_inputs) else {}
            name = sub_input.get("name")
            outer_entry = outer_inputs_by_name.get(name) or (
                outer.inputs[link.origin_slot] if link.origin_slot < len(outer.inputs) else {}
            )
            outer_link = graph.links.get(outer_entry.get("link")) if outer_entry.get("link") is not None else None
            if outer_link is not None:
                graph.links[new_key] = UiLink(outer_link.origin, outer_link.origin_slot, target, link.target_slot, link.type)
            else:
                _unlink_inner(graph, target, link.target_slot, new_key, outer_widget_values.get(name, _MISSING))
            continue
        graph.links[new_key] = UiLink(prefix + link.origin, link.origin_slot, target, link.target_slot, link.type)
    # Links leaving the subgraph node now leave the inner node that feeds each subgraph output.
    feeders = {
        link.target_slot: (prefix + link.origin, link.origin_slot)
        for link in inner_links.values()
        if link.target == str(SUBGRAPH_OUTPUT_NODE) and link.origin != str(SUBGRAPH_INPUT_NODE)
    }
    _rewire_outputs(graph, outer.id, feeders)
    del graph.nodes[outer.id]


_MISSING = object()


def _unlink_inner(graph: UiGraph, node_id: str, slot: int, link_key: str, value: Any) -> None:
    node = graph.nodes.get(node_id)
    if node is None or slot >= len(node.inputs):
        return
    entry = node.inputs[slot]
    if entry.get("link") == link_key:
        entry["link"] = None
    widget = (entry.get("widget") or {}).get("name")
    if widget and value is not _MISSING:
        node.overrides[widget] = value


def _rewire_outputs(graph: UiGraph, outer_id: str, feeders: dict[int, tuple[str, int]]) -> None:
    for key, link in list(graph.links.items()):
        if link.origin != outer_id:
            continue
        feeder = feeders.get(link.origin_slot)
        if feeder is None:
            del graph.links[key]
            _clear_input(graph, link.target, key)
        else:
            link.origin, link.origin_slot = feeder


def _clear_input(graph: UiGraph, node_id: str, link_key: str) -> None:
    node = graph.nodes.get(node_id)
    for entry in node.inputs if node else []:
        if entry.get("link") == link_key:
            entry["link"] = None


def _expand_group_node(graph: UiGraph, outer: UiNode, definition: dict[str, Any], layouts: Any) -> None:
    """A legacy group node: inner nodes by index, links [origin|None, slot, target, slot, id, type]."""
    from comfyd.workflow_formats.layouts import registry_layouts

    prefix = f"{outer.id}:"
    inner_nodes = definition.get("nodes") or []
    raw_links = definition.get("links") or []
    internal_targets = {(lk[2], lk[3]) for lk in raw_links if lk[0] is not None}
    external_targets = {(lk[2], lk[3]) for lk in raw_links if lk[0] is None}
    internal_origins = {(lk[0], lk[1]) for lk in raw_links if lk[0] is not None}
    exposed_extra = {(e[0].get("index") if isinstance(e[0], dict) else e[0], e[1]) for e in definition.get("external") or []}

    config = definition.get("config") or {}

    def shown(index: int, kind: str, key: Any) -> bool | None:
        entry = ((config.get(str(index)) or {}).get(kind) or {}).get(str(key)) or {}
        return entry.get("visible") if isinstance(entry, dict) else None

    # The group node's inputs: inner inputs not fed from inside and not hidden in its config,
    # in inner-node then slot order.
    group_inputs: list[tuple[int, int]] = []
    for index, raw in enumerate(inner_nodes):
        for slot, entry in enumerate(raw.get("inputs") or []):
            if (index, slot) in internal_targets:
                continue
            if entry.get("widget") and (index, slot) not in external_targets:
                continue
            key = entry.get("type") if raw.get("type") == "Reroute" else entry.get("name")
            if shown(index, "input", key) is False:
                continue
            group_inputs.append((index, slot))
    # Its outputs: inner outputs not used inside (or marked external), unless its config says.
    group_outputs: list[tuple[int, int]] = []
    for index, raw in enumerate(inner_nodes):
        for slot, _entry in enumerate(raw.get("outputs") or []):
            visible = shown(index, "output", slot)
            if visible is None:
                visible = (index, slot) not in internal_origins or (index, slot) in exposed_extra
            if visible:
                group_outputs.append((index, slot))

    lookup = layouts or registry_layouts()
    # The group node's widgets: first each inner node's plain widgets (node by node), then the
    # widgets that were converted to inputs and are not fed from inside the group (again node by
    # node); a seed's control value and an upload button's value follow their widget.
    plain: list[tuple[str, str, bool]] = []
    converted: list[tuple[str, str, bool]] = []
    for index, raw in enumerate(inner_nodes):
        inner_id = f"{prefix}{index}"
        node = _node_from_json(raw, inner_id, lambda key: None)
        for entry in node.inputs:
            entry["link"] = None
        node.mode = outer.mode if outer.mode in (2, 4) and node.mode == 0 else node.mode
        as_inputs = {
            e.get("name"): slot for slot, e in enumerate(node.inputs) if (e.get("widget") or {}).get("name") == e.get("name")
        }
        slots = _widget_slots(node.type, lookup)
        # Newer frontends list every widget among a node's inputs; older ones only the widgets
        # converted to inputs. When the listed widgets account for all the node's own stored
        # values, the list is complete, and a widget missing from it was added to the node
        # after the group was saved: no value was stored for it.
        listed_values = sum(1 + int(extra) for name, extra in slots if name in as_inputs)
        own = node.widgets_values if isinstance(node.widgets_values, list) else []
        complete_list = bool(as_inputs) and listed_values == len(own)
        for name, extra in slots:
            if name not in as_inputs:
                if not complete_list:
                    plain.append((inner_id, name, extra))
            elif (index, as_inputs[name]) not in internal_targets:
                converted.append((inner_id, name, extra))
        graph.nodes[inner_id] = node
    values = list(outer.widgets_values) if isinstance(outer.widgets_values, list) else []
    cursor = 0
    for inner_id, name, extra in plain + converted:
        if cursor >= len(values):
            break
        graph.nodes[inner_id].overrides[name] = values[cursor]
        cursor += 1
        if extra and cursor < len(values) and _is_extra_value(values[cursor]):
            cursor += 1
    for number, lk in enumerate(raw_links):
        origin, origin_slot, target, target_slot = lk[0], int(lk[1]), lk[2], int(lk[3])
        kind = str(lk[5]) if len(lk) > 5 else "*"
        target_id = f"{prefix}{target}"
        key = f"{prefix}#{number}"
        if origin is None:
            continue
        graph.links[key] = UiLink(f"{prefix}{origin}", origin_slot, target_id, target_slot, kind)
        graph.nodes[target_id].inputs[target_slot]["link"] = key
    for position, (index, slot) in enumerate(group_inputs):
        target_id = f"{prefix}{index}"
        outer_link_key = outer.inputs[position].get("link") if position < len(outer.inputs) else None
        outer_link = graph.links.get(outer_link_key) if outer_link_key is not None else None
        if outer_link is None:
            continue
        key = f"{prefix}#in{position}"
        graph.links[key] = UiLink(outer_link.origin, outer_link.origin_slot, target_id, slot, outer_link.type)
        graph.nodes[target_id].inputs[slot]["link"] = key
    feeders = {pos: (f"{prefix}{index}", slot) for pos, (index, slot) in enumerate(group_outputs)}
    _rewire_outputs(graph, outer.id, feeders)
    del graph.nodes[outer.id]


CONTROL_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
UPLOAD_VALUES = frozenset({"image", "video", "audio"})


def _is_extra_value(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, str) and (value in CONTROL_VALUES or value in UPLOAD_VALUES))


def _widget_slots(node_type: str, lookup: Any) -> list[tuple[str, bool]]:
    """(widget name, followed by a control/upload value) for a node type, for group nodes."""
    if node_type == "PrimitiveNode":
        return [("value", True)]
    if node_type in ("Reroute", "Note", "MarkdownNote"):
        return [("text", False)] if node_type != "Reroute" else []
    layout = lookup(node_type)
    if layout is None:
        return []
    return [(w.name, w.control or w.upload) for w in layout.widgets]
