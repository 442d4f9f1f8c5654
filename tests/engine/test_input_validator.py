"""InputSpec.validator, comfyd's form of ComfyUI's VALIDATE_INPUTS: the input's range and
choice-list checks are skipped, a returned reason is `custom_validation_failed`, such errors
follow the node's other errors, and a failing check is a 400, not a crash."""

from __future__ import annotations

from typing import Any

import pytest

from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.graph import parse_workflow
from comfyd.engine.schema import Combo, Int, Node, NodeOutput, NodeRegistry, NodeSchema
from comfyd.engine.validate import validate_workflow


def _even(env: Any, value: Any) -> str | None:
    return None if value % 2 == 0 else f"{value} is odd"


def _broken(env: Any, value: Any) -> str | None:
    raise RuntimeError("check failed")


def _registry() -> NodeRegistry:
    registry = NodeRegistry()

    class Checked(Node):
        schema = NodeSchema(
            class_type="Checked",
            inputs=(
                Int("plain", default=0, min=0, max=10),
                Int("even", default=0, min=0, max=10, validator=_even),
                Combo("name", ["listed"], validator=lambda env, value: None if value != "bad" else "bad name"),
                Combo("broken", ["x"], optional=True, validator=_broken),
            ),
            output_node=True,
        )

        def run(self, ctx: Any, **inputs: Any) -> NodeOutput:
            return NodeOutput()

    registry.register(Checked)
    return registry


def _errors(**inputs: Any) -> list[dict[str, Any]]:
    body = {"1": {"class_type": "Checked", "inputs": {"plain": 1, "even": 2, "name": "listed", **inputs}}}
    try:
        validate_workflow(parse_workflow(body), _registry(), None)
    except WorkflowValidationError as exc:
        return exc.body["node_errors"]["1"]["errors"]
    return []


def test_validator_replaces_range_and_list_checks() -> None:
    assert _errors(even=100, name="not listed but accepted") == []


def test_reason_is_custom_validation_failed_after_the_other_errors() -> None:
    errors = _errors(name="bad", even=3, plain=11)
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [
        ("value_bigger_than_max", "plain"),
        ("custom_validation_failed", "even"),
        ("custom_validation_failed", "name"),
    ]
    assert errors[1] == {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": "even - 3 is odd",
        "extra_info": {"input_name": "even"},
    }


def test_validator_sees_only_converted_values() -> None:
    errors = _errors(even="abc")
    assert [e["type"] for e in errors] == ["invalid_input_type"]


def test_a_raising_validator_is_an_exception_during_validation() -> None:
    [error] = _errors(broken="x")
    assert error["type"] == "exception_during_validation" and error["details"] == "check failed"


@pytest.mark.parametrize("value", [0, 4])
def test_valid_values_pass(value: int) -> None:
    assert _errors(even=value) == []
