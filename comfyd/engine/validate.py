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

import math
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.events import full_type_name
from comfyd.engine.graph import BadLink, Graph, Link, WorkflowRequest
from comfyd.engine.schema import InputSpec, NodeRegistry, NodeSchema
from comfyd.engine.service_limits import (  # noqa: F401  (InputLimit, SIZE_LIMITED_NODES: re-exported)
    SIZE_LIMITED_NODES,
    InputLimit,
    LatentSizes,
    ServiceLimits,
    budget_message,
    over_budget,
)
from comfyd.engine.topo import find_cycles, sort_ids, topological_order, upstream_closure

if TYPE_CHECKING:
    from comfyd.engine.context import NodeEnvironment

# ComfyUI stops listing COMBO choices in error bodies beyond this many.
MAX_LISTED_CHOICES = 20


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
            _prompt_error(
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
                _prompt_error(
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
        raise WorkflowValidationError(_prompt_error("prompt_no_outputs", "Prompt has no outputs", ""))

    followed = req.node_id
    if followed is not None and followed not in graph:
        if req.node_id_explicit:
            raise WorkflowValidationError(
                _prompt_error(
                    "invalid_prompt",
                    f"The followed node_id '{followed}' is not in the workflow",
                    f"Node ID '#{followed}'",
                    {"node_id": followed},
                )
            )
        followed = None
    targets = sort_ids(set(outputs) | ({followed} if followed is not None else set()))

    deps = _declared_dependencies(graph, schemas)
    closure = upstream_closure(deps, targets)
    checker = _InputChecker(graph, schemas, env, limits)
    errors: dict[str, list[dict[str, Any]]] = {}
    inputs: dict[str, dict[str, Any]] = {}
    for node_id in sort_ids(closure):
        node_errors, inputs[node_id] = checker.check_node(node_id)
        if node_errors:
            errors[node_id] = node_errors

    errors_by_budget = _pixel_budget_errors(graph, closure, inputs, errors, checker, limits)
    for node_id, error in errors_by_budget.items():
        errors.setdefault(node_id, []).append(error)

    for cycle in find_cycles({n: deps[n] for n in closure}):
        for node_id in cycle:
            errors.setdefault(node_id, []).extend(_cycle_errors(graph, node_id, cycle))

    if errors:
        raise WorkflowValidationError(_failed_validation_body(graph, deps, outputs, targets, errors))

    order = topological_order(deps, closure)
    return WorkflowPlan(
        outputs=outputs,
        targets=targets,
        order=order,
        deps={n: sort_ids(set(deps[n])) for n in order},
        inputs=inputs,
    )


# --------------------------------------------------------------------------------------------
# Literal conversion (shared with the executor through WorkflowPlan.inputs)
# --------------------------------------------------------------------------------------------


def convert_literal(spec: InputSpec, value: Any) -> Any:
    """A literal in its declared type, as ComfyUI converts it; ValueError/TypeError if impossible."""
    if spec.type == "INT":
        return int(value)
    if spec.type == "FLOAT":
        return float(value)
    if spec.type == "STRING":
        return str(value)
    if spec.type == "BOOLEAN":
        return _to_bool(value)
    return value


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"expected true or false, got {value!r}")


# --------------------------------------------------------------------------------------------
# Per-node checks
# --------------------------------------------------------------------------------------------


def _declared_dependencies(graph: Graph, schemas: dict[str, NodeSchema]) -> dict[str, list[str]]:
    """Links of declared inputs to existing nodes; undeclared inputs are ignored, as in ComfyUI."""
    deps: dict[str, list[str]] = {}
    for node_id, node in graph.nodes.items():
        declared = {spec.name for spec in schemas[node_id].inputs}
        deps[node_id] = [
            link.node_id for name, link in node.links().items() if name in declared and link.node_id in graph
        ]
    return deps


class _InputChecker:
    def __init__(
        self, graph: Graph, schemas: dict[str, NodeSchema], env: NodeEnvironment | None, limits: ServiceLimits
    ) -> None:
        self.graph = graph
        self.schemas = schemas
        self.env = env
        self.limits = limits

    def check_node(self, node_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """(errors, converted inputs) for one node, every declared input checked."""
        node = self.graph.nodes[node_id]
        errors: list[dict[str, Any]] = []
        converted: dict[str, Any] = {}
        for spec in self.schemas[node_id].inputs:
            if spec.name not in node.inputs:
                if not spec.optional:
                    errors.append(
                        _error("required_input_missing", "Required input is missing", spec.name, spec.name)
                    )
                continue
            try:
                error, value = self._check_input(spec, node.inputs[spec.name], node.class_type)
            except Exception as exc:  # a COMBO choice source failing, say: report, never crash
                error, value = _exception_error(spec.name, exc), None
            if error is not None:
                errors.append(error)
            else:
                converted[spec.name] = value
        errors.extend(self._custom_errors(node_id, converted))
        return errors, converted

    def _config(self, spec: InputSpec) -> list[Any]:
        return spec.input_config(self.env)

    def _check_input(self, spec: InputSpec, value: Any, class_type: str) -> tuple[dict[str, Any] | None, Any]:
        name = spec.name
        if isinstance(value, BadLink):
            return _error(
                "bad_linked_input",
                "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                name,
                name,
                input_config=self._config(spec),
                received_value=value.value,
            ), None
        if isinstance(value, Link):
            return self._check_link(spec, value), value
        if spec.is_link:
            return _error(
                "invalid_input_type",
                f"Input must be linked to a {spec.type} output",
                f"{name}, {value!r} is a literal, not a link [node_id, output_index]",
                name,
                input_config=self._config(spec),
                received_value=value,
            ), None
        return self._check_literal(spec, value, class_type)

    def _check_link(self, spec: InputSpec, link: Link) -> dict[str, Any] | None:
        name = spec.name
        source = self.graph.nodes.get(link.node_id)
        if source is None:
            return _error(
                "linked_node_missing",
                f"Input is linked to node '{link.node_id}', which is not in the workflow",
                f"{name}, node '{link.node_id}' does not exist",
                name,
                input_config=self._config(spec),
                linked_node=link.to_json(),
            )
        outputs = self.schemas[link.node_id].outputs
        if link.output >= len(outputs):
            return _error(
                "linked_output_missing",
                f"Input is linked to output {link.output} of node '{link.node_id}' ({source.class_type}), "
                f"which has {len(outputs)} output(s)",
                f"{name}, output index {link.output} out of range",
                name,
                input_config=self._config(spec),
                linked_node=link.to_json(),
            )
        received = outputs[link.output].type
        if not types_compatible(received, spec.type):
            return _error(
                "return_type_mismatch",
                "Return type mismatch between linked nodes",
                f"{name}, received_type({received}) mismatch input_type({spec.type})",
                name,
                input_config=self._config(spec),
                received_type=received,
                linked_node=link.to_json(),
            )
        return None

    def _check_literal(self, spec: InputSpec, raw: Any, class_type: str) -> tuple[dict[str, Any] | None, Any]:
        name = spec.name
        try:
            value = convert_literal(spec, raw)
        except (TypeError, ValueError, OverflowError) as exc:
            return _error(
                "invalid_input_type",
                f"Failed to convert an input value to a {spec.type} value",
                f"{name}, {raw}, {exc}",
                name,
                input_config=self._config(spec),
                received_value=raw,
                exception_message=str(exc),
            ), None
        error = self._representable(spec, value, raw)
        if error is not None:
            return error, None
        # ComfyUI skips these checks for inputs its VALIDATE_INPUTS takes (see _custom_errors).
        if spec.validator is None:
            error = self._declared_checks(spec, value)
            if error is not None:
                return error, None
        if spec.type == "INT":
            limit = self.limits.for_input(class_type, name)
            if limit is not None:
                if limit.max is not None and value > limit.max:
                    return self._value_error(
                        spec,
                        value,
                        "value_bigger_than_max",
                        f"bigger than max of {limit.max} (comfyd service limit"
                        + (f"; {limit.setting} raises it)" if limit.setting else ")"),
                    ), None
                if limit.multiple_of and value % limit.multiple_of:
                    return self._value_error(
                        spec, value, "value_not_multiple_of", f"is not a multiple of {limit.multiple_of}"
                    ), None
        return None, value

    def _representable(self, spec: InputSpec, value: Any, raw: Any) -> dict[str, Any] | None:
        """comfyd's checks on any literal: finite numbers, valid Unicode, bounded text.

        ComfyUI lets NaN through (every comparison with it is false) and renders black images;
        a lone surrogate cannot be encoded, stored or shown. Both are refused here, before a job
        exists, with ComfyUI's error shape.
        """
        name = spec.name
        if isinstance(value, float) and not math.isfinite(value):
            return _error("invalid_input_type", f"Input must be a finite number, got {value}",
                          f"{name}, {value} is not finite", name, input_config=self._config(spec),
                          received_value=str(value))
        if isinstance(value, str):
            if _has_surrogate(value):
                return _error("invalid_input_type", "Input is not valid Unicode text (it holds a lone surrogate)",
                              f"{name}, lone UTF-16 surrogate", name, input_config=self._config(spec))
            limit = self.limits.max_text_chars
            if spec.type == "STRING" and len(value) > limit:
                return _error("value_bigger_than_max",
                              f"Text of {len(value)} characters is longer than max of {limit} (comfyd service limit; COMFYD_MAX_TEXT_CHARS raises it)",
                              name, name, input_config=self._config(spec), received_length=len(value))
        return None

    def _declared_checks(self, spec: InputSpec, value: Any) -> dict[str, Any] | None:
        """The declaration's own limits: INT/FLOAT min and max, COMBO choices."""
        name = spec.name
        if spec.type in ("INT", "FLOAT"):
            if spec.min is not None and value < spec.min:
                return self._value_error(
                    spec, value, "value_smaller_than_min", f"smaller than min of {spec.min}"
                )
            if spec.max is not None and value > spec.max:
                return self._value_error(spec, value, "value_bigger_than_max", f"bigger than max of {spec.max}")
        if spec.type == "COMBO":
            choices = spec.resolve_choices(self.env)
            if value not in choices:
                if len(choices) > MAX_LISTED_CHOICES:
                    listed, config = f"(list of length {len(choices)})", None
                else:
                    listed, config = str(choices), self._config(spec)
                return _error(
                    "value_not_in_list",
                    "Value not in list",
                    f"{name}: '{value}' not in {listed}",
                    name,
                    input_config=config,
                    received_value=value,
                )
        return None

    def _custom_errors(self, node_id: str, converted: dict[str, Any]) -> list[dict[str, Any]]:
        """ComfyUI's VALIDATE_INPUTS step: inputs with a validator, once the declared checks
        passed; like ComfyUI, these errors come after the node's other errors."""
        errors: list[dict[str, Any]] = []
        for spec in self.schemas[node_id].inputs:
            value = converted.get(spec.name)
            if spec.validator is None or spec.name not in converted or isinstance(value, Link):
                continue  # a linked value is only known when the node runs, which checks it then
            try:
                reason = spec.validator(self.env, value)
            except Exception as exc:  # a broken check must give a 400, never crash validation
                errors.append(_exception_error(spec.name, exc))
                continue
            if reason is not None:
                errors.append(
                    _error(
                        "custom_validation_failed",
                        "Custom validation failed for node",
                        f"{spec.name} - {reason}",
                        spec.name,
                    )
                )
        node_check = self.schemas[node_id].check
        if node_check is not None:
            literals = {k: v for k, v in converted.items() if not isinstance(v, Link)}
            name = next(iter(literals), "")
            try:
                reason = node_check(self.env, literals)
            except Exception as exc:
                errors.append(_exception_error(name, exc))
            else:
                if reason is not None:
                    errors.append(
                        _error("custom_validation_failed", "Custom validation failed for node", f"{name} - {reason}", name)
                    )
        return errors

    def _value_error(self, spec: InputSpec, value: Any, error_type: str, what: str) -> dict[str, Any]:
        return _error(
            error_type,
            f"Value {value} {what}",
            spec.name,
            spec.name,
            input_config=self._config(spec),
            received_value=value,
        )


def _pixel_budget_errors(
    graph: Graph,
    closure: set[str],
    inputs: dict[str, dict[str, Any]],
    errors: dict[str, list[dict[str, Any]]],
    checker: _InputChecker,
    limits: ServiceLimits,
) -> dict[str, dict[str, Any]]:
    """One value_bigger_than_max error per node whose latent exceeds the pixel budget, on its
    first size input (`width`, or `scale_by` for LatentUpscaleBy)."""
    if not limits.max_latent_pixels:
        return {}
    sizes = LatentSizes(graph, lambda node_id, name: inputs.get(node_id, {}).get(name))
    found: dict[str, dict[str, Any]] = {}
    for node_id in sort_ids(closure):
        if node_id in errors:
            continue  # its own inputs are wrong already; the budget would only repeat that
        size = over_budget(sizes, node_id, limits.max_latent_pixels)
        if size is None:
            continue
        name = "scale_by" if graph.nodes[node_id].class_type == "LatentUpscaleBy" else "width"
        spec = checker.schemas[node_id].input(name)
        value = graph.nodes[node_id].inputs.get(name)
        found[node_id] = _error(
            "value_bigger_than_max",
            budget_message(size[0], size[1], limits.max_latent_pixels),
            name,
            name,
            input_config=checker._config(spec) if spec is not None else None,
            received_value=value.to_json() if isinstance(value, Link) else value,
        )
    return found


def _has_surrogate(text: str) -> bool:
    try:
        text.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def types_compatible(received: str, expected: str) -> bool:
    """ComfyUI's rule: "*" matches anything; "A,B" means either A or B."""
    if received == "*" or expected == "*":
        return True
    return bool(set(received.split(",")) & set(expected.split(",")))


def _cycle_errors(graph: Graph, node_id: str, cycle: list[str]) -> list[dict[str, Any]]:
    members = set(cycle)
    described = " -> ".join([*cycle, cycle[0]]) if len(cycle) > 1 else f"{node_id} -> {node_id}"
    return [
        _error(
            "dependency_cycle",
            f"Dependency cycle detected among nodes {', '.join(cycle)}",
            f"{name}, {described}",
            name,
            linked_node=link.to_json(),
            cycle=list(cycle),
        )
        for name, link in graph.nodes[node_id].links().items()
        if link.node_id in members
    ]


# --------------------------------------------------------------------------------------------
# Body shapes
# --------------------------------------------------------------------------------------------


def _error(error_type: str, message: str, details: str, input_name: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": error_type,
        "message": message,
        "details": details,
        "extra_info": {"input_name": input_name, **extra},
    }


def _exception_error(input_name: str, exc: Exception) -> dict[str, Any]:
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


def _prompt_error(
    error_type: str, message: str, details: str, extra_info: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "error": {"type": error_type, "message": message, "details": details, "extra_info": extra_info or {}},
        "node_errors": {},
    }


def _failed_validation_body(
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
    body = _prompt_error("prompt_outputs_failed_validation", "Prompt outputs failed validation", details)
    body["node_errors"] = node_errors
    return body
