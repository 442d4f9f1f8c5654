"""Validation: ComfyUI's 400 bodies, byte for byte where ComfyUI defines them; comfyd's limits."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.graph import parse_workflow
from comfyd.engine.validate import ServiceLimits, plan_workflow, validate_workflow

REFERENCE = Path(__file__).parent / "comfyui_validation_errors"


def _fail(fake: Any, body: Any, limits: ServiceLimits | None = None) -> dict[str, Any]:
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(parse_workflow(body), fake.registry, fake.env, limits)
    # The body must survive the trip to an HTTP response.
    return json.loads(json.dumps(info.value.body))


def _only_error(body: dict[str, Any], node_id: str) -> dict[str, Any]:
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert list(body["node_errors"]) == [node_id]
    [error] = body["node_errors"][node_id]["errors"]
    return error


def test_valid_default_workflow(fake: Any, default_prompt: dict[str, Any]) -> None:
    assert validate_workflow(parse_workflow(default_prompt), fake.registry, fake.env) == ["9"]
    plan = plan_workflow(parse_workflow(default_prompt), fake.registry, fake.env)
    assert plan.targets == ["3", "9"]
    assert plan.inputs["3"]["seed"] == 42 and plan.inputs["3"]["cfg"] == 8.0


# --- the six captured ComfyUI responses --------------------------------------------------------


def _mutate(name: str, prompt: dict[str, Any]) -> dict[str, Any]:
    if name == "bad_ckpt_name":
        prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    elif name == "bad_int":
        prompt["3"]["inputs"]["steps"] = "abc"
    elif name == "cfg_out_of_range":
        prompt["3"]["inputs"]["cfg"] = 1000
    elif name == "missing_input":
        del prompt["3"]["inputs"]["positive"]
    elif name == "no_outputs":
        del prompt["9"]
    elif name == "unknown_class":
        prompt["3"]["class_type"] = "NoSuchNode"
    return prompt


@pytest.mark.parametrize("name", sorted(p.stem for p in REFERENCE.glob("*.json")))
def test_matches_captured_comfyui_response(fake: Any, default_prompt: dict[str, Any], name: str) -> None:
    expected = json.loads((REFERENCE / f"{name}.json").read_text())["response"]
    assert _fail(fake, {"prompt": _mutate(name, default_prompt)}) == expected


def test_reference_cases_are_all_covered() -> None:
    assert {p.stem for p in REFERENCE.glob("*.json")} == {
        "bad_ckpt_name",
        "bad_int",
        "cfg_out_of_range",
        "missing_input",
        "no_outputs",
        "unknown_class",
    }


# --- every error type ----------------------------------------------------------------------


def test_value_smaller_than_min(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"]["steps"] = 0
    error = _only_error(_fail(fake, default_prompt), "3")
    assert error["type"] == "value_smaller_than_min"
    assert error["message"] == "Value 0 smaller than min of 1"
    assert error["details"] == "steps"
    assert error["extra_info"] == {
        "input_name": "steps",
        "input_config": ["INT", {"default": 20, "min": 1, "max": 10000}],
        "received_value": 0,
    }


def test_sampler_and_scheduler_not_in_list(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"]["sampler_name"] = "nope"
    default_prompt["3"]["inputs"]["scheduler"] = "weird"
    body = _fail(fake, default_prompt)
    errors = body["node_errors"]["3"]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [
        ("value_not_in_list", "sampler_name"),
        ("value_not_in_list", "scheduler"),
    ]
    assert errors[0]["details"] == "sampler_name: 'nope' not in ['euler', 'euler_ancestral', 'dpmpp_2m']"
    assert errors[1]["extra_info"]["input_config"] == [["normal", "karras", "simple"], {}]


def test_long_choice_lists_are_not_echoed(fake: Any, default_prompt: dict[str, Any]) -> None:
    from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec

    class ManyChoices(Node):
        schema = NodeSchema(
            class_type="ManyChoices",
            inputs=(Combo("name", [f"m{i}.safetensors" for i in range(25)]),),
            outputs=(OutputSpec("MODEL"),),
        )

    fake.registry.register(ManyChoices)
    default_prompt["4"] = {"class_type": "ManyChoices", "inputs": {"name": "x"}}
    default_prompt["3"]["inputs"]["model"] = ["4", 0]
    default_prompt["6"]["inputs"]["clip"] = default_prompt["7"]["inputs"]["clip"] = ["30", 1]
    default_prompt["8"]["inputs"]["vae"] = ["30", 2]
    default_prompt["30"] = {
        "class_type": "CheckpointLoaderSimple",
        "inputs": {"ckpt_name": "sd15_random.safetensors"},
    }
    error = _only_error(_fail(fake, default_prompt), "4")
    assert error["details"] == "name: 'x' not in (list of length 25)"
    assert error["extra_info"] == {"input_name": "name", "input_config": None, "received_value": "x"}


def test_return_type_mismatch(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"]["positive"] = ["5", 0]  # LATENT into CONDITIONING
    error = _only_error(_fail(fake, default_prompt), "3")
    assert error == {
        "type": "return_type_mismatch",
        "message": "Return type mismatch between linked nodes",
        "details": "positive, received_type(LATENT) mismatch input_type(CONDITIONING)",
        "extra_info": {
            "input_name": "positive",
            "input_config": ["CONDITIONING", {}],
            "received_type": "LATENT",
            "linked_node": ["5", 0],
        },
    }


def test_link_to_missing_node_and_missing_output(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"]["model"] = ["44", 0]
    default_prompt["8"]["inputs"]["vae"] = ["4", 7]
    body = _fail(fake, default_prompt)
    [missing_node] = body["node_errors"]["3"]["errors"]
    assert missing_node["type"] == "linked_node_missing"
    assert missing_node["extra_info"]["input_name"] == "model"
    assert "'44'" in missing_node["message"]
    [missing_output] = body["node_errors"]["8"]["errors"]
    assert missing_output["type"] == "linked_output_missing"
    assert missing_output["extra_info"] == {
        "input_name": "vae",
        "input_config": ["VAE", {}],
        "linked_node": ["4", 7],
    }
    assert "3 output(s)" in missing_output["message"]


def test_bad_linked_input_and_literal_for_link(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"]["model"] = ["4"]
    default_prompt["3"]["inputs"]["positive"] = "a cat"
    errors = _fail(fake, default_prompt)["node_errors"]["3"]["errors"]
    assert [(e["type"], e["extra_info"]["input_name"]) for e in errors] == [
        ("bad_linked_input", "model"),
        ("invalid_input_type", "positive"),
    ]
    assert errors[0]["message"] == "Bad linked input, must be a length-2 list of [node_id, slot_index]"
    assert errors[1]["message"] == "Input must be linked to a CONDITIONING output"


def test_literal_conversion_like_comfyui(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"].update(steps="20", cfg="7.5", seed=7.9)
    plan = plan_workflow(parse_workflow(default_prompt), fake.registry, fake.env)
    assert (
        plan.inputs["3"]["steps"] == 20 and plan.inputs["3"]["cfg"] == 7.5 and plan.inputs["3"]["seed"] == 7
    )
    default_prompt["3"]["inputs"]["cfg"] = None
    error = _only_error(_fail(fake, default_prompt), "3")
    assert error["type"] == "invalid_input_type"
    assert error["message"] == "Failed to convert an input value to a FLOAT value"
    assert error["extra_info"]["received_value"] is None


def test_all_errors_collected(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"].update(steps="abc", cfg=1000, sampler_name="x")
    del default_prompt["3"]["inputs"]["negative"]
    default_prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    default_prompt["5"]["inputs"]["width"] = 20000
    default_prompt["6"]["inputs"]["text"] = ["7", 0]  # CONDITIONING into STRING
    body = _fail(fake, default_prompt)
    found = {
        nid: [(e["type"], e["extra_info"]["input_name"]) for e in v["errors"]]
        for nid, v in body["node_errors"].items()
    }
    assert found == {
        "3": [
            ("invalid_input_type", "steps"),
            ("value_bigger_than_max", "cfg"),
            ("value_not_in_list", "sampler_name"),
            ("required_input_missing", "negative"),
        ],
        "4": [("value_not_in_list", "ckpt_name")],
        "5": [("value_bigger_than_max", "width")],
        "6": [("return_type_mismatch", "text")],
    }
    assert all(v["dependent_outputs"] == ["9"] for v in body["node_errors"].values())
    assert body["node_errors"]["5"]["class_type"] == "EmptyLatentImage"


def test_top_level_details_list_the_output_nodes_own_errors(
    fake: Any, default_prompt: dict[str, Any]
) -> None:
    del default_prompt["9"]["inputs"]["images"]
    body = _fail(fake, default_prompt)
    assert body["error"]["details"] == "Required input is missing: images"
    assert body["node_errors"]["9"]["dependent_outputs"] == ["9"]


def test_only_nodes_reachable_from_outputs_are_validated(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": "wide"}}
    assert validate_workflow(parse_workflow(default_prompt), fake.registry, fake.env) == ["9"]


def test_dependent_outputs_lists_each_output(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}
    default_prompt["11"] = {"class_type": "PreviewAny", "inputs": {"source": ["5", 0]}}
    default_prompt["4"]["inputs"]["ckpt_name"] = "nope.safetensors"
    body = _fail(fake, default_prompt)
    assert body["node_errors"]["4"]["dependent_outputs"] == ["9", "10"]


def test_partial_execution_targets(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["10"] = {"class_type": "PreviewAny", "inputs": {"source": ["4", 0]}}
    default_prompt["5"]["inputs"]["width"] = "wide"  # only node 9 needs it
    req = parse_workflow({"prompt": default_prompt, "partial_execution_targets": ["10"], "node_id": "4"})
    assert validate_workflow(req, fake.registry, fake.env) == ["10"]


# --- comfyd's own checks ---------------------------------------------------------------------


def test_service_limits_on_size_and_batch(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["5"]["inputs"].update(width=1032, height=500, batch_size=5)
    errors = _fail(fake, default_prompt)["node_errors"]["5"]["errors"]
    assert [(e["type"], e["details"], e["message"]) for e in errors] == [
        ("value_not_multiple_of", "height", "Value 500 is not a multiple of 8"),
        ("value_bigger_than_max", "batch_size", "Value 5 bigger than max of 4 (comfyd service limit; COMFYD_MAX_BATCH_SIZE raises it)"),
    ]
    assert errors[0]["extra_info"] == {
        "input_name": "height",
        "input_config": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
        "received_value": 500,
    }


def test_pixel_budget_refuses_a_large_latent(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["5"]["inputs"].update(width=2048, height=2048)
    error = _only_error(_fail(fake, default_prompt), "5")
    assert error == {
        "type": "value_bigger_than_max",
        "message": "Value 2048x2048 (4194304 pixels) bigger than max of 1048576 pixels (comfyd service limit; COMFYD_MAX_LATENT_PIXELS raises it)",
        "details": "width",
        "extra_info": {
            "input_name": "width",
            "input_config": ["INT", {"default": 512, "min": 16, "max": 16384, "step": 8}],
            "received_value": 2048,
        },
    }


@pytest.mark.parametrize("size", [(1344, 768), (896, 1152), (1024, 1024), (2048, 512)])
def test_pixel_budget_accepts_sdxl_sizes(fake: Any, default_prompt: dict[str, Any], size: tuple[int, int]) -> None:
    default_prompt["5"]["inputs"].update(width=size[0], height=size[1])
    assert validate_workflow(parse_workflow(default_prompt), fake.registry, fake.env) == ["9"]


def test_limits_are_configurable(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["5"]["inputs"].update(width=2048, height=2048, batch_size=8)
    req = parse_workflow(default_prompt)
    roomy = ServiceLimits(max_latent_pixels=2048 * 2048, input_limits=())
    assert validate_workflow(req, fake.registry, fake.env, roomy) == ["9"]
    assert validate_workflow(req, fake.registry, fake.env, ServiceLimits(max_latent_pixels=None, input_limits=()))
    settings = fake.env.settings.model_copy(update={"max_latent_pixels": 2048 * 2048, "max_batch_size": 8})
    limits = ServiceLimits.from_settings(settings)
    assert limits.max_latent_pixels == 2048 * 2048
    limit = limits.for_input("EmptyLatentImage", "width")
    assert (limit.max, limit.multiple_of) == (None, 8)
    assert limits.for_input("ImageScale", "width") is None
    fake.env.settings = settings
    assert validate_workflow(req, fake.registry, fake.env) == ["9"]
    fake.env.settings = settings.model_copy(update={"max_latent_pixels": 2048 * 2047})
    assert _only_error(_fail(fake, default_prompt), "5")["type"] == "value_bigger_than_max"


def test_too_many_nodes(fake: Any, default_prompt: dict[str, Any]) -> None:
    for i in range(94):
        default_prompt[str(100 + i)] = {"class_type": "EmptyLatentImage", "inputs": {}}
    assert len(default_prompt) == 101
    body = _fail(fake, default_prompt)
    assert body["error"]["type"] == "invalid_prompt"
    assert body["error"]["message"] == "Workflow has 101 nodes; comfyd runs at most 100 (COMFYD_MAX_WORKFLOW_NODES raises it)"
    assert body["node_errors"] == {}
    del default_prompt["100"]
    assert validate_workflow(parse_workflow(default_prompt), fake.registry, fake.env) == ["9"]


def test_cycle_is_reported_on_each_node(fake: Any, default_prompt: dict[str, Any]) -> None:
    # 3 reads its latent from 8's input chain: 3 -> 20 -> 3 via a fake latent node.
    fake_latent = {
        "class_type": "KSampler",
        "inputs": dict(default_prompt["3"]["inputs"], latent_image=["3", 0]),
    }
    default_prompt["20"] = fake_latent
    default_prompt["3"]["inputs"]["latent_image"] = ["20", 0]
    body = _fail(fake, default_prompt)
    assert set(body["node_errors"]) == {"3", "20"}
    for node_id, source in (("3", "20"), ("20", "3")):
        [error] = body["node_errors"][node_id]["errors"]
        assert error["type"] == "dependency_cycle"
        assert error["message"] == "Dependency cycle detected among nodes 3, 20"
        assert error["extra_info"] == {
            "input_name": "latent_image",
            "linked_node": [source, 0],
            "cycle": ["3", "20"],
        }
        assert body["node_errors"][node_id]["dependent_outputs"] == ["9"]


def test_self_loop(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["3"]["inputs"]["latent_image"] = ["3", 0]
    [error] = _fail(fake, default_prompt)["node_errors"]["3"]["errors"]
    assert error["type"] == "dependency_cycle" and error["details"] == "latent_image, 3 -> 3"


def test_followed_node_must_exist_in_graph_form(fake: Any, default_prompt: dict[str, Any]) -> None:
    nodes = {nid: {"class_type": n["class_type"], "inputs": {}} for nid, n in default_prompt.items()}
    body = _fail(fake, {"nodes": nodes, "node_id": "42"})
    assert body == {
        "error": {
            "type": "invalid_prompt",
            "message": "The followed node_id '42' is not in the workflow",
            "details": "Node ID '#42'",
            "extra_info": {"node_id": "42"},
        },
        "node_errors": {},
    }


def test_followed_node_is_validated_and_planned(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["20"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 12}}
    body = _fail(fake, {"prompt": default_prompt, "node_id": "20"})
    assert body["node_errors"]["20"]["dependent_outputs"] == ["20"]
    default_prompt["20"]["inputs"] = {"width": 64, "height": 64, "batch_size": 1}
    req = parse_workflow({"prompt": default_prompt, "node_id": "20"})
    assert plan_workflow(req, fake.registry, fake.env).targets == ["9", "20"]


def test_unknown_class_anywhere_is_refused(fake: Any, default_prompt: dict[str, Any]) -> None:
    default_prompt["50"] = {"class_type": "Mystery", "inputs": {}}
    body = _fail(fake, default_prompt)
    assert body["error"]["message"] == "Cannot execute because node Mystery does not exist."
    assert body["error"]["details"] == "Node ID '#50'"


def test_choice_source_failure_is_reported_not_raised(fake: Any, default_prompt: dict[str, Any]) -> None:
    from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec

    def broken(env: Any) -> list[str]:
        raise OSError("models dir unreadable")

    class BrokenLoader(Node):
        schema = NodeSchema(
            class_type="BrokenLoader", inputs=(Combo("name", broken),), outputs=(OutputSpec("MODEL"),)
        )

    fake.registry.register(BrokenLoader)
    default_prompt["4"] = {"class_type": "BrokenLoader", "inputs": {"name": "a"}}
    default_prompt["3"]["inputs"]["model"] = ["4", 0]
    default_prompt["6"]["inputs"]["clip"] = ["6", 0]  # also a self-loop, reported beside it
    body = _fail(fake, default_prompt)
    [error] = body["node_errors"]["4"]["errors"]
    assert error["type"] == "exception_during_validation"
    assert error["details"] == "models dir unreadable"
    assert error["extra_info"]["exception_type"] == "OSError"
    assert "6" in body["node_errors"]
