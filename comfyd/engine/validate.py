"""Workflow validation, before anything runs or any model is touched.

Mirrors ComfyUI's `validate_prompt` / `validate_inputs`: the same error types, messages and body
shapes, so a ComfyUI client shows comfyd's 400s as it shows ComfyUI's. Differences, on purpose:
- every error of every node reachable from the outputs is collected (ComfyUI too, per output);
- a workflow with any invalid output is refused as a whole (ComfyUI would run the valid outputs
  and return the others' errors beside a 200): a service job either runs as asked or not at all;
- comfyd's own checks: dependency cycles, the node-count limit, service limits (the pixel
  budget of every latent, width/height multiples, batch_size), links to missing nodes or outputs, literals given for link inputs,
  and the followed `node_id` existing;
- BOOLEAN literals are parsed strictly ("false" is false), not with Python's `bool()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.graph import WorkflowRequest
from comfyd.engine.input_checks import (
    InputChecker,
    cycle_errors,
    declared_dependencies,
    pixel_budget_errors,
)
from comfyd.engine.schema import NodeRegistry, NodeSchema
from comfyd.engine.service_limits import SIZE_LIMITED_NODES, InputLimit, ServiceLimits  # noqa: F401  (re-exported)
from comfyd.engine.topo import find_cycles, sort_ids, topological_order, upstream_closure
from comfyd.engine.validation_errors import failed_validation_body, prompt_error

if TYPE_CHECKING:
    from comfyd.engine.context import NodeEnvironment


# --------------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------------


@dataclass
class WorkflowPlan:
    """What validation learned, in the form the executor needs."""

    outputs: list[str]  # output nodes to execute, sorted
    targets: list[str]  # outputs plus the followed node_id (if any), sorted
    order: list[str]  # every node the targets need, in deterministic topological order
    deps: dict[str, list[str]]  # node -> nodes its declared link inputs read from
    # node -> declared input name -> converted literal, or Link; absent optional inputs omitted.
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)


def validate_workflow(
    req: WorkflowRequest,
    registry: NodeRegistry,
    env: NodeEnvironment | None,
    limits: ServiceLimits | None = None,
) -> list[str]:
    """The output node ids to execute, or WorkflowValidationError with ComfyUI's 400 body."""
    return plan_workflow(req, registry, env, limits).outputs


def plan_workflow(
    req: WorkflowRequest,
    registry: NodeRegistry,
    env: NodeEnvironment | None,
    limits: ServiceLimits | None = None,
) -> WorkflowPlan:
    if limits is None:
        limits = ServiceLimits.from_settings(env.settings) if env is not None else ServiceLimits()
    graph = req.graph

    if len(graph) > limits.max_nodes:
        raise WorkflowValidationError(
            prompt_error(
                "invalid_prompt",
                f"Workflow has {len(graph)} nodes; comfyd runs at most {limits.max_nodes} "
                "(COMFYD_MAX_WORKFLOW_NODES raises it)",
                f"{len(graph)} nodes > max_nodes {limits.max_nodes}",
                {"node_count": len(graph), "max_nodes": limits.max_nodes},
            )
        )

    schemas: dict[str, NodeSchema] = {}
    for node_id, node in graph.nodes.items():
        node_cls = registry.get(node.class_type)
        if node_cls is None:
            raise WorkflowValidationError(
                prompt_error(
                    "invalid_prompt",
                    f"Cannot execute because node {node.class_type} does not exist.",
                    f"Node ID '#{node_id}'",
                )
            )
        schemas[node_id] = node_cls.schema

    wanted_outputs = set(req.partial_execution_targets) if req.partial_execution_targets is not None else None
    outputs = sort_ids(
        node_id
        for node_id, schema in schemas.items()
        if schema.output_node and (wanted_outputs is None or node_id in wanted_outputs)
    )
    if not outputs:
        raise WorkflowValidationError(prompt_error("prompt_no_outputs", "Prompt has no outputs", ""))

    followed = req.node_id
    if followed is not None and followed not in graph:
        if req.node_id_explicit:
            raise WorkflowValidationError(
                prompt_error(
                    "invalid_prompt",
                    f"The followed node_id '{followed}' is not in the workflow",
                    f"Node ID '#{followed}'",
                    {"node_id": followed},
                )
            )
        followed = None
    targets = sort_ids(set(outputs) | ({followed} if followed is not None else set()))

    deps = declared_dependencies(graph, schemas)
    closure = upstream_closure(deps, targets)
    checker = InputChecker(graph, schemas, env, limits)
    errors: dict[str, list[dict[str, Any]]] = {}
    inputs: dict[str, dict[str, Any]] = {}
    for node_id in sort_ids(closure):
        node_errors, inputs[node_id] = checker.check_node(node_id)
        if node_errors:
            errors[node_id] = node_errors

    errors_by_budget = pixel_budget_errors(graph, closure, inputs, errors, checker, limits)
    for node_id, error in errors_by_budget.items():
        errors.setdefault(node_id, []).append(error)

    for cycle in find_cycles({n: deps[n] for n in closure}):
        for node_id in cycle:
            errors.setdefault(node_id, []).extend(cycle_errors(graph, node_id, cycle))

    if errors:
        raise WorkflowValidationError(failed_validation_body(graph, deps, outputs, targets, errors))

    order = topological_order(deps, closure)
    return WorkflowPlan(
        outputs=outputs,
        targets=targets,
        order=order,
        deps={n: sort_ids(set(deps[n])) for n in order},
        inputs=inputs,
    )
