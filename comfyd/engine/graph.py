"""Workflow input: both accepted request forms, parsed into one internal `Graph`.

Accepted bodies:
- ComfyUI's API format, bare `{"3": {"class_type": ..., "inputs": {...}}, ...}` or wrapped as
  POST /prompt sends it: `{"prompt": {...}, "client_id", "extra_data", ...}`. A link is
  `[node_id, output_index]`; a list literal is written `{"__value__": [...]}` (ComfyUI's escape).
- comfyd's graph form: `{"nodes": {id: {class_type, inputs}}, "edges": [{from, from_output, to,
  to_input}], "node_id", "execution_mode", "priority"}`; links live in `edges` only.

The pydantic models check the shape at the boundary; everything after parsing works on plain
dataclasses. Semantic checks (unknown classes, types, ranges) belong to `validate.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from comfyd.engine.errors import WorkflowParseError

ExecutionMode = Literal["sequential", "parallel"]
DEFAULT_FOLLOWED_NODE = "3"  # the KSampler of ComfyUI's default graph
DEFAULT_PRIORITY = 1


# --------------------------------------------------------------------------------------------
# Internal graph (plain dataclasses)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    """An input fed by output `output` of node `node_id`."""

    node_id: str
    output: int

    def to_json(self) -> list[Any]:
        return [self.node_id, self.output]


@dataclass(frozen=True)
class BadLink:
    """A list where a link was expected but which is not `[node_id, output_index]`.

    Kept (not rejected at parse time) so validation reports it in ComfyUI's node_errors shape
    (`bad_linked_input`) together with every other error of the workflow.
    """

    value: list[Any]


# An input value: a literal (int, float, str, bool, None, list/dict from `__value__`), or a link.
InputValue = Any


@dataclass
class GraphNode:
    id: str
    class_type: str
    inputs: dict[str, InputValue] = field(default_factory=dict)
    title: str | None = None  # ComfyUI's `_meta.title`, kept for round trips

    def links(self) -> dict[str, Link]:
        return {name: value for name, value in self.inputs.items() if isinstance(value, Link)}


@dataclass
class Graph:
    nodes: dict[str, GraphNode] = field(default_factory=dict)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __len__(self) -> int:
        return len(self.nodes)

    def to_api_prompt(self) -> dict[str, Any]:
        return to_api_prompt(self)


@dataclass
class WorkflowRequest:
    """A parsed request: the graph plus how the caller wants it run."""

    graph: Graph
    # The node the caller follows (its sampler steps are the job's progress, its output is part
    # of the result). None only for an API-format body that names none and has no node "3".
    node_id: str | None = DEFAULT_FOLLOWED_NODE
    execution_mode: ExecutionMode = "sequential"
    priority: int = DEFAULT_PRIORITY
    # The API-format prompt (as submitted, or converted from the graph form): PNG metadata, history.
    prompt: dict[str, Any] = field(default_factory=dict)
    # True when the body named node_id explicitly: then it must exist in the graph.
    node_id_explicit: bool = False
    # POST /prompt's other fields, passed through for the job layer.
    client_id: str | None = None
    prompt_id: str | None = None
    extra_data: dict[str, Any] = field(default_factory=dict)
    number: float | None = None
    front: bool | None = None
    # ComfyUI's partial execution: only these output nodes (None = every output node).
    partial_execution_targets: list[str] | None = None


def to_api_prompt(graph: Graph) -> dict[str, Any]:
    """The graph in ComfyUI's API format (links as `[id, index]`, list literals escaped)."""
    prompt: dict[str, Any] = {}
    for node in graph.nodes.values():
        inputs: dict[str, Any] = {}
        for name, value in node.inputs.items():
            if isinstance(value, Link):
                inputs[name] = value.to_json()
            elif isinstance(value, BadLink):
                inputs[name] = list(value.value)
            elif isinstance(value, list):
                inputs[name] = {"__value__": list(value)}
            else:
                inputs[name] = value
        entry: dict[str, Any] = {"inputs": inputs, "class_type": node.class_type}
        if node.title is not None:
            entry["_meta"] = {"title": node.title}
        prompt[node.id] = entry
    return prompt


# --------------------------------------------------------------------------------------------
# Boundary models (pydantic v2)
# --------------------------------------------------------------------------------------------


def _node_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(f"a node id must be a string or an integer, got {value!r}")
    text = str(value)
    if not text:
        raise ValueError("a node id must not be empty")
    return text


class ApiNodeModel(BaseModel):
    """One node of an API-format prompt. Unknown keys (`_meta`, `is_changed`) are tolerated."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    class_type: str = Field(min_length=1)
    inputs: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] | None = Field(default=None, alias="_meta")


class WrappedPromptModel(BaseModel):
    """POST /prompt's body; comfyd also reads node_id / execution_mode / priority from it."""

    model_config = ConfigDict(extra="ignore")

    prompt: dict[str | int, Any]
    client_id: str | None = None
    prompt_id: str | None = None
    extra_data: dict[str, Any] = Field(default_factory=dict)
    number: float | None = None
    front: bool | None = None
    partial_execution_targets: list[str] | None = None
    node_id: str | None = None
    execution_mode: ExecutionMode = "sequential"
    priority: int = Field(DEFAULT_PRIORITY, ge=1, le=10)

    @field_validator("node_id", mode="before")
    @classmethod
    def _normalise_node_id(cls, value: Any) -> Any:
        return None if value is None else _node_id(value)

    @field_validator("partial_execution_targets", mode="before")
    @classmethod
    def _normalise_targets(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_node_id(v) for v in value]
        return value


class EdgeModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_node: str = Field(alias="from")
    from_output: int = Field(0, ge=0)
    to: str
    to_input: str = Field(min_length=1)

    @field_validator("from_node", "to", mode="before")
    @classmethod
    def _normalise(cls, value: Any) -> str:
        return _node_id(value)


class GraphFormModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    nodes: dict[str | int, ApiNodeModel]
    edges: list[EdgeModel] = Field(default_factory=list)
    node_id: str = DEFAULT_FOLLOWED_NODE
    execution_mode: ExecutionMode = "sequential"
    priority: int = Field(DEFAULT_PRIORITY, ge=1, le=10)
    client_id: str | None = None
    extra_data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("node_id", mode="before")
    @classmethod
    def _normalise_node_id(cls, value: Any) -> str:
        return _node_id(value)


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def parse_workflow(body: Any) -> WorkflowRequest:
    """Parse a request body in either form; raise WorkflowParseError naming what is wrong."""
    if not isinstance(body, dict):
        raise WorkflowParseError(
            "Workflow must be a JSON object", f"got {type(body).__name__}; expected an API-format prompt"
        )
    if _is_ui_workflow(body) or (_is_wrapped_prompt(body) and _is_ui_workflow(body["prompt"])):
        raise WorkflowParseError(
            "This is a ComfyUI UI workflow, not an API-format prompt",
            "export it with 'Save (API Format)' in ComfyUI, or send the graph form",
        )
    if _is_wrapped_prompt(body):
        return _parse_wrapped(body)
    if _is_graph_form(body):
        return _parse_graph_form(body)
    prompt = _api_prompt(body)
    followed = DEFAULT_FOLLOWED_NODE if DEFAULT_FOLLOWED_NODE in prompt else None
    return WorkflowRequest(graph=_graph_from_api(prompt), node_id=followed, prompt=prompt)


def _is_ui_workflow(value: Any) -> bool:
    """The UI's saved workflow: a node list plus a links list (the API format has neither)."""
    return isinstance(value, dict) and isinstance(value.get("nodes"), list) and "links" in value


def _looks_like_node(value: Any) -> bool:
    return isinstance(value, dict) and "class_type" in value


def _is_wrapped_prompt(body: dict[str, Any]) -> bool:
    # A bare prompt could (absurdly) have a node whose id is "prompt"; that one has class_type.
    return "prompt" in body and not _looks_like_node(body["prompt"])


def _is_graph_form(body: dict[str, Any]) -> bool:
    return "nodes" in body and isinstance(body["nodes"], dict) and not _looks_like_node(body["nodes"])


def _parse_wrapped(body: dict[str, Any]) -> WorkflowRequest:
    try:
        model = WrappedPromptModel.model_validate(body)
    except ValidationError as exc:
        raise _parse_error("Invalid prompt request", exc) from None
    prompt = _api_prompt(model.prompt)
    node_id = model.node_id
    explicit = node_id is not None
    if node_id is None:
        node_id = DEFAULT_FOLLOWED_NODE if DEFAULT_FOLLOWED_NODE in prompt else None
    return WorkflowRequest(
        graph=_graph_from_api(prompt),
        node_id=node_id,
        execution_mode=model.execution_mode,
        priority=model.priority,
        prompt=prompt,
        node_id_explicit=explicit,
        client_id=model.client_id,
        prompt_id=model.prompt_id,
        extra_data=model.extra_data,
        number=model.number,
        front=model.front,
        partial_execution_targets=model.partial_execution_targets,
    )


def _parse_graph_form(body: dict[str, Any]) -> WorkflowRequest:
    _check_node_entries(body["nodes"])
    try:
        model = GraphFormModel.model_validate(body)
    except ValidationError as exc:
        raise _parse_error("Invalid graph-form workflow", exc) from None
    prompt: dict[str, Any] = {}
    for node_id, node in model.nodes.items():
        inputs: dict[str, Any] = {}
        for name, value in node.inputs.items():
            if isinstance(value, list):
                raise WorkflowParseError(
                    f"Node '{node_id}' input '{name}': links belong in 'edges' in the graph form",
                    f"Node ID '#{node_id}'; write a list literal as {{\"__value__\": [...]}}",
                )
            inputs[name] = value
        entry: dict[str, Any] = {"inputs": inputs, "class_type": node.class_type}
        if node.meta is not None:
            entry["_meta"] = node.meta
        if str(node_id) in prompt:
            raise WorkflowParseError(f"Node id '{node_id}' appears twice", f"Node ID '#{node_id}'")
        prompt[str(node_id)] = entry
    for index, edge in enumerate(model.edges):
        where = f"edges[{index}] ({edge.from_node}:{edge.from_output} -> {edge.to}.{edge.to_input})"
        target = prompt.get(edge.to)
        if target is None:
            raise WorkflowParseError(
                f"{where}: target node '{edge.to}' is not in 'nodes'", f"Node ID '#{edge.to}'"
            )
        if edge.to_input in target["inputs"]:
            raise WorkflowParseError(
                f"{where}: input '{edge.to_input}' of node '{edge.to}' is given both a value and an edge",
                f"Node ID '#{edge.to}'",
            )
        # A missing source node is a validation error (node_errors shape), not a parse error.
        target["inputs"][edge.to_input] = [edge.from_node, edge.from_output]
    return WorkflowRequest(
        graph=_graph_from_api(prompt),
        node_id=model.node_id,
        execution_mode=model.execution_mode,
        priority=model.priority,
        prompt=prompt,
        node_id_explicit=True,
        client_id=model.client_id,
        extra_data=model.extra_data,
    )


def _check_node_entries(nodes: dict[Any, Any]) -> None:
    """ComfyUI's own messages for the two node-level shape errors it knows."""
    for node_id, entry in nodes.items():
        if not isinstance(entry, dict):
            raise WorkflowParseError(
                f"Node '{node_id}' must be an object with 'class_type' and 'inputs'",
                f"Node ID '#{node_id}'",
            )
        if "class_type" not in entry:
            raise WorkflowParseError(
                "Cannot execute because a node is missing the class_type property.", f"Node ID '#{node_id}'"
            )


def _api_prompt(raw: dict[str, Any]) -> dict[str, Any]:
    """Check an API-format prompt's shape; return it with string node ids."""
    if not isinstance(raw, dict):
        raise WorkflowParseError("'prompt' must be an object mapping node ids to nodes")
    if not raw:
        raise WorkflowParseError("Workflow has no nodes")
    _check_node_entries(raw)
    prompt: dict[str, Any] = {}
    for node_id, entry in raw.items():
        key = str(node_id)
        try:
            ApiNodeModel.model_validate(entry)
        except ValidationError as exc:
            raise _parse_error(f"Invalid node '{key}'", exc, f"Node ID '#{key}'") from None
        if key in prompt:
            raise WorkflowParseError(f"Node id '{key}' appears twice", f"Node ID '#{key}'")
        prompt[key] = entry
    return prompt


def _graph_from_api(prompt: dict[str, Any]) -> Graph:
    graph = Graph()
    for node_id, entry in prompt.items():
        model = ApiNodeModel.model_validate(entry)
        inputs = {name: _input_value(value) for name, value in model.inputs.items()}
        title = model.meta.get("title") if model.meta else None
        graph.nodes[node_id] = GraphNode(
            id=node_id,
            class_type=model.class_type,
            inputs=inputs,
            title=title if isinstance(title, str) else None,
        )
    return graph


def _input_value(value: Any) -> InputValue:
    if isinstance(value, list):
        if (
            len(value) == 2
            and isinstance(value[0], str | int)
            and not isinstance(value[0], bool)
            and str(value[0]) != ""
            and isinstance(value[1], int)
            and not isinstance(value[1], bool)
            and value[1] >= 0
        ):
            return Link(str(value[0]), value[1])
        return BadLink(list(value))
    if isinstance(value, dict) and "__value__" in value:
        return value["__value__"]
    return value


def _parse_error(message: str, exc: ValidationError, details: str = "") -> WorkflowParseError:
    problems = []
    for err in exc.errors():
        location = ".".join(str(part) for part in err["loc"]) or "(body)"
        problems.append(f"{location}: {err['msg']}")
    text = "; ".join(problems)
    return WorkflowParseError(f"{message}: {text}", details or text)


def read_workflow_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in `path` (any accepted workflow form, not yet parsed).

    Raises ValueError naming the file when it cannot be read, is not JSON or is not an object.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ValueError(f"workflow {path}: cannot read it: {exc}") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"workflow {path}: not JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise ValueError(f"workflow {path}: expected a JSON object (a workflow), got {type(body).__name__}")
    return body
