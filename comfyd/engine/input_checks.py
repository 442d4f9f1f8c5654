"""The per-node checks of workflow validation (comfyd.engine.validate): literal conversion,
each input against its declaration, service limits, links and cycles."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from comfyd.engine.graph import BadLink, Graph, Link
from comfyd.engine.schema import InputSpec, NodeSchema
from comfyd.engine.service_limits import (
    LatentSizes,
    ServiceLimits,
    budget_message,
    over_budget,
)
from comfyd.engine.topo import sort_ids
from comfyd.engine.validation_errors import exception_error, input_error

if TYPE_CHECKING:
    from comfyd.engine.context import NodeEnvironment

# ComfyUI stops listing COMBO choices in error bodies beyond this many.
MAX_LISTED_CHOICES = 20


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


def declared_dependencies(graph: Graph, schemas: dict[str, NodeSchema]) -> dict[str, list[str]]:
    """Links of declared inputs to existing nodes; undeclared inputs are ignored, as in ComfyUI."""
    deps: dict[str, list[str]] = {}
    for node_id, node in graph.nodes.items():
        declared = {spec.name for spec in schemas[node_id].inputs}
        deps[node_id] = [
            link.node_id for name, link in node.links().items() if name in declared and link.node_id in graph
        ]
    return deps


class InputChecker:
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
                        input_error("required_input_missing", "Required input is missing", spec.name, spec.name)
                    )
                continue
            try:
                error, value = self._check_input(spec, node.inputs[spec.name], node.class_type)
            except Exception as exc:  # a COMBO choice source failing, say: report, never crash
                error, value = exception_error(spec.name, exc), None
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
            return input_error(
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
            return input_error(
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
            return input_error(
                "linked_node_missing",
                f"Input is linked to node '{link.node_id}', which is not in the workflow",
                f"{name}, node '{link.node_id}' does not exist",
                name,
                input_config=self._config(spec),
                linked_node=link.to_json(),
            )
        outputs = self.schemas[link.node_id].outputs
        if link.output >= len(outputs):
            return input_error(
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
            return input_error(
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
            return input_error(
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
            return input_error("invalid_input_type", f"Input must be a finite number, got {value}",
                          f"{name}, {value} is not finite", name, input_config=self._config(spec),
                          received_value=str(value))
        if isinstance(value, str):
            if _has_surrogate(value):
                return input_error("invalid_input_type", "Input is not valid Unicode text (it holds a lone surrogate)",
                              f"{name}, lone UTF-16 surrogate", name, input_config=self._config(spec))
            limit = self.limits.max_text_chars
            if spec.type == "STRING" and len(value) > limit:
                return input_error("value_bigger_than_max",
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
                return input_error(
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
                errors.append(exception_error(spec.name, exc))
                continue
            if reason is not None:
                errors.append(
                    input_error(
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
                errors.append(exception_error(name, exc))
            else:
                if reason is not None:
                    errors.append(
                        input_error("custom_validation_failed", "Custom validation failed for node", f"{name} - {reason}", name)
                    )
        return errors

    def _value_error(self, spec: InputSpec, value: Any, error_type: str, what: str) -> dict[str, Any]:
        return input_error(
            error_type,
            f"Value {value} {what}",
            spec.name,
            spec.name,
            input_config=self._config(spec),
            received_value=value,
        )


def pixel_budget_errors(
    graph: Graph,
    closure: set[str],
    inputs: dict[str, dict[str, Any]],
    errors: dict[str, list[dict[str, Any]]],
    checker: InputChecker,
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
        found[node_id] = input_error(
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


def cycle_errors(graph: Graph, node_id: str, cycle: list[str]) -> list[dict[str, Any]]:
    members = set(cycle)
    described = " -> ".join([*cycle, cycle[0]]) if len(cycle) > 1 else f"{node_id} -> {node_id}"
    return [
        input_error(
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
