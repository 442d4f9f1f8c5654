"""Parsing: both request forms into one Graph; clear errors on garbage."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from comfyd.engine.errors import WorkflowParseError
from comfyd.engine.graph import BadLink, Graph, Link, parse_workflow, to_api_prompt


def _graph_form(prompt: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The graph form of an API prompt: literals in nodes, links as edges."""
    nodes: dict[str, Any] = {}
    edges: list[dict[str, Any]] = []
    for node_id, node in prompt.items():
        literals = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                edges.append({"from": value[0], "from_output": value[1], "to": node_id, "to_input": name})
            else:
                literals[name] = value
        nodes[node_id] = {"class_type": node["class_type"], "inputs": literals}
    return {"nodes": nodes, "edges": edges, **extra}


def _shape(graph: Graph) -> dict[str, Any]:
    return {nid: (n.class_type, n.inputs) for nid, n in graph.nodes.items()}


def test_both_forms_give_the_same_graph(default_prompt: dict[str, Any]) -> None:
    bare = parse_workflow(default_prompt)
    wrapped = parse_workflow({"prompt": default_prompt, "client_id": "abc", "extra_data": {"x": 1}})
    graph_form = parse_workflow(
        _graph_form(default_prompt, node_id="3", execution_mode="parallel", priority=7)
    )

    assert _shape(bare.graph) == _shape(wrapped.graph) == _shape(graph_form.graph)
    assert bare.graph.nodes["3"].inputs["model"] == Link("4", 0)
    assert bare.graph.nodes["6"].inputs["text"] == "cyberpunk city"
    # The graph form becomes the same API prompt (what history and PNG metadata store).
    assert graph_form.prompt == to_api_prompt(bare.graph)
    assert parse_workflow(graph_form.prompt).graph.nodes == graph_form.graph.nodes

    assert (bare.node_id, bare.execution_mode, bare.priority) == ("3", "sequential", 1)
    assert (wrapped.client_id, wrapped.extra_data) == ("abc", {"x": 1})
    assert (graph_form.node_id, graph_form.execution_mode, graph_form.priority) == ("3", "parallel", 7)
    assert graph_form.node_id_explicit and not bare.node_id_explicit


def test_shipped_default_workflows_parse() -> None:
    files = resources.files("comfyd.workflows")
    api = parse_workflow(json.loads(files.joinpath("default_api.json").read_text()))
    graph = parse_workflow(json.loads(files.joinpath("default_graph_form.json").read_text()))
    assert set(api.graph.nodes) == set(graph.graph.nodes) == {"3", "4", "5", "6", "7", "8", "9"}
    assert graph.graph.nodes["8"].inputs == {"samples": Link("3", 0), "vae": Link("4", 2)}


def test_int_ids_are_normalised_to_strings() -> None:
    req = parse_workflow(
        {
            "prompt": {
                1: {"class_type": "A", "inputs": {"x": [2, 0]}},
                "2": {"class_type": "B", "inputs": {}},
            },
            "node_id": 1,
        }
    )
    assert set(req.graph.nodes) == {"1", "2"}
    assert req.graph.nodes["1"].inputs["x"] == Link("2", 0)
    assert req.node_id == "1" and req.node_id_explicit


def test_graph_form_accepts_int_edge_ids_and_keeps_meta() -> None:
    req = parse_workflow(
        {
            "nodes": {
                "1": {"class_type": "A", "inputs": {}, "_meta": {"title": "Loader"}},
                "2": {"class_type": "B"},
            },
            "edges": [{"from": 1, "from_output": 2, "to": 2, "to_input": "x"}],
            "node_id": 2,
        }
    )
    assert req.graph.nodes["2"].inputs == {"x": Link("1", 2)}
    assert req.graph.nodes["1"].title == "Loader"
    assert req.prompt["1"]["_meta"] == {"title": "Loader"}
    assert req.node_id == "2"


def test_list_literals_and_malformed_links() -> None:
    req = parse_workflow(
        {
            "1": {
                "class_type": "A",
                "inputs": {"values": {"__value__": [1, 2, 3]}, "bad": ["4"], "neg": ["4", -1], "flag": True},
            }
        }
    )
    inputs = req.graph.nodes["1"].inputs
    assert inputs["values"] == [1, 2, 3]
    assert inputs["bad"] == BadLink(["4"]) and inputs["neg"] == BadLink(["4", -1])
    assert inputs["flag"] is True
    # Round trip keeps the escape so the list is not read back as a link.
    assert to_api_prompt(req.graph)["1"]["inputs"]["values"] == {"__value__": [1, 2, 3]}


def test_api_prompt_without_node_3_follows_nothing() -> None:
    req = parse_workflow({"10": {"class_type": "A", "inputs": {}}})
    assert req.node_id is None


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([1, 2], "JSON object"),
        ({}, "no nodes"),
        ({"3": "KSampler"}, "Node '3' must be an object"),
        ({"3": {"inputs": {}}}, "missing the class_type property"),
        ({"3": {"class_type": "", "inputs": {}}}, "Invalid node '3'"),
        ({"3": {"class_type": "A", "inputs": [1]}}, "inputs"),
        ({"prompt": {"3": {"class_type": "A"}}, "priority": 11}, "priority"),
        ({"prompt": {"3": {"class_type": "A"}}, "execution_mode": "fast"}, "execution_mode"),
        ({"prompt": "nope"}, "prompt"),
        (
            {"nodes": {"1": {"class_type": "A"}}, "edges": [{"from": "1", "to": "9", "to_input": "x"}]},
            "target node '9'",
        ),
        ({"nodes": {"1": {"class_type": "A"}}, "edges": [{"from": "1", "to": "1"}]}, "to_input"),
        ({"nodes": {"1": {"class_type": "A", "inputs": {"x": ["2", 0]}}}}, "links belong in 'edges'"),
        (
            {
                "nodes": {"1": {"class_type": "A", "inputs": {"x": 1}}},
                "edges": [{"from": "1", "to": "1", "to_input": "x"}],
            },
            "both a value and an edge",
        ),
        ({"nodes": {"1": {"class_type": "A"}}, "priority": 0}, "priority"),
        ({"nodes": {"1": {"class_type": "A"}}, "surprise": 1}, "surprise"),
        ({"nodes": [{"id": 1}], "links": []}, "UI workflow"),
    ],
)
def test_parse_errors_name_the_problem(body: Any, fragment: str) -> None:
    with pytest.raises(WorkflowParseError) as info:
        parse_workflow(body)
    text = info.value.message + " " + info.value.details
    assert fragment in text
    body_json = info.value.body()
    assert body_json["error"]["type"] == "invalid_prompt" and body_json["node_errors"] == {}


def test_missing_class_type_uses_comfyui_message() -> None:
    with pytest.raises(WorkflowParseError) as info:
        parse_workflow({"prompt": {"7": {"inputs": {}}}})
    assert info.value.body() == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because a node is missing the class_type property.",
            "details": "Node ID '#7'",
            "extra_info": {},
        },
        "node_errors": {},
    }
