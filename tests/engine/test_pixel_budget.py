"""The pixel budget (COMFYD_MAX_LATENT_PIXELS): sizes, hires passes and primitives, at validation
and when the nodes run."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.errors import WorkflowValidationError
from comfyd.engine.graph import parse_workflow
from comfyd.engine.service_limits import LatentTooLarge, scaled_size, upscaled_size
from comfyd.engine.validate import validate_workflow
from comfyd.nodes.latent.basic import EmptyLatentImage, LatentUpscale, LatentUpscaleBy
from comfyd.nodes.utils.primitives import PrimitiveInt


def _with_real_nodes(fake: Any) -> Any:
    for node_cls in (LatentUpscale, LatentUpscaleBy, PrimitiveInt):
        fake.registry.register(node_cls)
    return fake


def _hires(prompt: dict[str, Any], scale_by: float) -> dict[str, Any]:
    """The default graph with a second pass: sample, LatentUpscaleBy, sample again."""
    prompt["10"] = {"class_type": "LatentUpscaleBy",
                    "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "scale_by": scale_by}}
    prompt["11"] = {"class_type": "KSampler", "inputs": dict(prompt["3"]["inputs"], latent_image=["10", 0])}
    prompt["8"]["inputs"]["samples"] = ["11", 0]
    return prompt


def _errors(fake: Any, prompt: dict[str, Any]) -> dict[str, Any]:
    with pytest.raises(WorkflowValidationError) as info:
        validate_workflow(parse_workflow(prompt), fake.registry, fake.env)
    return json.loads(json.dumps(info.value.body))["node_errors"]


def _valid(fake: Any, prompt: dict[str, Any]) -> bool:
    return validate_workflow(parse_workflow(prompt), fake.registry, fake.env) == ["9"]


def test_hires_pass_is_checked_against_the_budget(fake: Any, default_prompt: dict[str, Any]) -> None:
    _with_real_nodes(fake)
    default_prompt["5"]["inputs"].update(width=832, height=640)
    assert _valid(fake, _hires(default_prompt, 1.2))  # 1000x768: under 1024x1024
    errors = _errors(fake, _hires(default_prompt, 1.5))  # 1248x960: over
    assert list(errors) == ["10"]
    [error] = errors["10"]["errors"]
    assert error["type"] == "value_bigger_than_max"
    assert error["message"] == (
        "Value 1248x960 (1198080 pixels) bigger than max of 1048576 pixels (comfyd service limit; COMFYD_MAX_LATENT_PIXELS raises it)"
    )
    assert error["extra_info"]["input_name"] == "scale_by"
    assert error["extra_info"]["received_value"] == 1.5
    assert errors["10"]["class_type"] == "LatentUpscaleBy"


def test_latent_upscale_to_a_fixed_size_and_to_an_aspect(fake: Any, default_prompt: dict[str, Any]) -> None:
    _with_real_nodes(fake)
    default_prompt["5"]["inputs"].update(width=1024, height=512)
    default_prompt["10"] = {"class_type": "LatentUpscale", "inputs": {
        "samples": ["5", 0], "upscale_method": "bilinear", "width": 1536, "height": 0, "crop": "disabled"}}
    default_prompt["3"]["inputs"]["latent_image"] = ["10", 0]
    errors = _errors(fake, default_prompt)  # 1536 wide keeps 2:1, so 1536x768
    assert "1536x768" in errors["10"]["errors"][0]["message"]
    default_prompt["10"]["inputs"].update(width=1344, height=768)
    assert _valid(fake, default_prompt)


def test_a_size_from_a_primitive_is_checked(fake: Any, default_prompt: dict[str, Any]) -> None:
    _with_real_nodes(fake)
    default_prompt["20"] = {"class_type": "PrimitiveInt", "inputs": {"value": 2048}}
    default_prompt["5"]["inputs"].update(width=["20", 0], height=2048)
    errors = _errors(fake, default_prompt)
    assert errors["5"]["errors"][0]["message"].startswith("Value 2048x2048 ")
    assert errors["5"]["errors"][0]["extra_info"]["received_value"] == ["20", 0]
    default_prompt["20"]["inputs"]["value"] = 512
    assert _valid(fake, default_prompt)


def test_sizes_follow_comfyuis_rounding() -> None:
    assert scaled_size((832, 640), 1.5) == (1248, 960)
    assert scaled_size((64, 64), 1.3) == (80, 80)  # 8 cells * 1.3 = 10.4 -> 10
    assert upscaled_size((1024, 512), 1536, 0) == (1536, 768)
    assert upscaled_size((512, 512), 0, 0) == (512, 512)
    assert upscaled_size((512, 512), 30, 30) == (64, 64)  # at least 64 pixels a side


def _ctx(fake: Any, class_type: str) -> NodeContext:
    return NodeContext(env=fake.env, job_id="j", node_id="1", class_type=class_type)


def test_nodes_check_the_budget_when_they_run(fake: Any) -> None:
    """Sizes validation cannot know (a latent encoded from an upload, say) are checked at run time."""
    big = {"samples": torch.zeros(1, 4, 128, 128)}  # 1024x1024: exactly the budget
    ctx = _ctx(fake, "LatentUpscaleBy")
    assert LatentUpscaleBy().run(ctx, big, "nearest-exact", 1.0)[0]["samples"].shape[-1] == 128
    with pytest.raises(LatentTooLarge, match="1152x1152"):
        LatentUpscaleBy().run(ctx, big, "nearest-exact", 1.125)
    with pytest.raises(LatentTooLarge):
        LatentUpscale().run(_ctx(fake, "LatentUpscale"), big, "bilinear", 2048, 1024, "disabled")
    with pytest.raises(LatentTooLarge):
        EmptyLatentImage().run(_ctx(fake, "EmptyLatentImage"), 2048, 2048)
    fake.env.settings = fake.env.settings.model_copy(update={"max_latent_pixels": 4096 * 4096})
    assert EmptyLatentImage().run(_ctx(fake, "EmptyLatentImage"), 2048, 1024)[0]["samples"].shape == (1, 4, 128, 256)
