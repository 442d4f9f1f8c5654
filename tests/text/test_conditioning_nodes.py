"""Conditioning nodes: schemas as ComfyUI declares them, and their outputs."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

import comfyd.nodes.conditioning.clip_text  # noqa: F401  (registers the nodes)
from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import REGISTRY
from comfyd.models.handles import ClipHandle
from comfyd.models.text_encoding import encode_text
from comfyd.settings import Settings


def make_ctx(models: Any = None, class_type: str = "X") -> NodeContext:
    return NodeContext(
        env=NodeEnvironment(settings=Settings(), models=models),
        job_id="j",
        node_id="1",
        class_type=class_type,
    )


def run(class_type: str, models: Any = None, **inputs: Any) -> Any:
    node = REGISTRY.get(class_type)
    assert node is not None, class_type
    out = node().run(make_ctx(models, class_type), **inputs)
    return out.values if hasattr(out, "values") else out


def cond(tokens: int = 77, dim: int = 8, pooled: bool = True, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    options = {"pooled_output": torch.randn(1, dim, generator=gen)} if pooled else {}
    return [[torch.randn(1, tokens, dim, generator=gen), options]]


def test_schemas_match_comfyui() -> None:
    info = REGISTRY.object_info()
    text = info["CLIPTextEncode"]
    assert text["input_order"] == {"required": ["text", "clip"]}
    assert text["input"]["required"]["text"][0] == "STRING"
    assert text["input"]["required"]["text"][1]["multiline"] is True
    assert text["input"]["required"]["text"][1]["dynamicPrompts"] is True
    assert text["category"] == "conditioning" and text["output"] == ["CONDITIONING"]

    sdxl = info["CLIPTextEncodeSDXL"]
    assert sdxl["input_order"]["required"] == [
        "clip",
        "width",
        "height",
        "crop_w",
        "crop_h",
        "target_width",
        "target_height",
        "text_g",
        "text_l",
    ]
    assert sdxl["input"]["required"]["width"] == ["INT", {"default": 1024, "min": 0, "max": 16384}]
    assert sdxl["input"]["required"]["crop_w"] == ["INT", {"default": 0, "min": 0, "max": 16384}]
    assert sdxl["category"] == "advanced/conditioning"

    area = info["ConditioningSetArea"]["input"]["required"]
    assert area["width"] == ["INT", {"default": 64, "min": 64, "max": 16384, "step": 8}]
    assert area["strength"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01}]
    assert info["ConditioningAverage"]["input"]["required"]["conditioning_to_strength"] == [
        "FLOAT",
        {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01},
    ]
    rng = info["ConditioningSetTimestepRange"]["input"]["required"]
    assert rng["start"] == ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}]
    assert rng["end"] == ["FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}]
    categories = {
        name: info[name]["category"]
        for name in (
            "ConditioningCombine",
            "ConditioningAverage",
            "ConditioningSetArea",
            "ConditioningConcat",
            "ConditioningSetTimestepRange",
            "ConditioningZeroOut",
        )
    }
    assert categories == {
        "ConditioningCombine": "conditioning",
        "ConditioningAverage": "conditioning",
        "ConditioningSetArea": "conditioning",
        "ConditioningConcat": "conditioning",
        "ConditioningSetTimestepRange": "advanced/conditioning",
        "ConditioningZeroOut": "advanced/conditioning",
    }


def test_clip_text_encode_node_uses_the_model_managers_embeddings(sd1_clip: ClipHandle) -> None:
    vector = torch.randn(1, 32) * 0.02
    asked: list[str] = []

    def load_embedding(name: str) -> dict[str, torch.Tensor] | None:
        asked.append(name)
        return {"l": vector} if name == "style" else None

    models = SimpleNamespace(load_embedding=load_embedding)
    (with_embedding,) = run("CLIPTextEncode", models=models, text="a embedding:style cat", clip=sd1_clip)
    assert asked == ["style"]
    direct = encode_text(sd1_clip, "a embedding:style cat", embeddings=load_embedding)
    torch.testing.assert_close(with_embedding[0][0], direct[0][0], atol=0, rtol=0)
    # no model manager (or one without load_embedding): the reference is dropped, nothing fails
    (without,) = run("CLIPTextEncode", models=None, text="a embedding:style cat", clip=sd1_clip)
    torch.testing.assert_close(without[0][0], encode_text(sd1_clip, "a cat")[0][0], atol=0, rtol=0)


def test_clip_text_encode_refuses_a_missing_clip() -> None:
    with pytest.raises(RuntimeError, match="clip input is invalid"):
        run("CLIPTextEncode", text="a", clip=None)


def test_clip_text_encode_sdxl_stores_size_conditioning(sdxl_clip: ClipHandle) -> None:
    (out,) = run(
        "CLIPTextEncodeSDXL",
        clip=sdxl_clip,
        width=1024,
        height=768,
        crop_w=16,
        crop_h=32,
        target_width=2048,
        target_height=1536,
        text_g="a red cat",
        text_l="a cat",
    )
    tensor, options = out[0]
    assert tensor.shape == (1, 77, 80)
    assert options["pooled_output"].shape == (1, 40)
    assert {
        k: options[k] for k in ("width", "height", "crop_w", "crop_h", "target_width", "target_height")
    } == {
        "width": 1024,
        "height": 768,
        "crop_w": 16,
        "crop_h": 32,
        "target_width": 2048,
        "target_height": 1536,
    }


def test_combine_concatenates_the_lists() -> None:
    first, second = cond(seed=1), cond(seed=2) + cond(seed=3)
    (out,) = run("ConditioningCombine", conditioning_1=first, conditioning_2=second)
    assert len(out) == 3
    assert out[0][0] is first[0][0] and out[1][0] is second[0][0] and out[2][0] is second[1][0]


def test_average_blends_cond_and_pooled() -> None:
    to, source = cond(seed=1), cond(seed=2)
    (out,) = run(
        "ConditioningAverage", conditioning_to=to, conditioning_from=source, conditioning_to_strength=0.25
    )
    torch.testing.assert_close(out[0][0], to[0][0] * 0.25 + source[0][0] * 0.75)
    torch.testing.assert_close(
        out[0][1]["pooled_output"], to[0][1]["pooled_output"] * 0.25 + source[0][1]["pooled_output"] * 0.75
    )
    assert to[0][1]["pooled_output"] is not out[0][1]["pooled_output"]  # input dict untouched


def test_average_cuts_or_zero_pads_the_source_to_the_target_length() -> None:
    to, short_source = cond(tokens=154, seed=1), cond(tokens=77, seed=2)
    (out,) = run(
        "ConditioningAverage",
        conditioning_to=to,
        conditioning_from=short_source,
        conditioning_to_strength=0.5,
    )
    torch.testing.assert_close(out[0][0][:, :77], to[0][0][:, :77] * 0.5 + short_source[0][0] * 0.5)
    torch.testing.assert_close(out[0][0][:, 77:], to[0][0][:, 77:] * 0.5)
    long_source = cond(tokens=154, seed=3)
    (out,) = run(
        "ConditioningAverage",
        conditioning_to=cond(seed=4),
        conditioning_from=long_source,
        conditioning_to_strength=0.0,
    )
    torch.testing.assert_close(out[0][0], long_source[0][0][:, :77])


def test_average_takes_the_source_pooled_when_the_target_has_none() -> None:
    to, source = cond(seed=1, pooled=False), cond(seed=2)
    (out,) = run(
        "ConditioningAverage", conditioning_to=to, conditioning_from=source, conditioning_to_strength=0.3
    )
    # ComfyUI: the target's pooled defaults to the source's, so the blend gives the source's back
    torch.testing.assert_close(out[0][1]["pooled_output"], source[0][1]["pooled_output"])


def test_average_of_different_widths_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="width"):
        run(
            "ConditioningAverage",
            conditioning_to=cond(dim=8),
            conditioning_from=cond(dim=16),
            conditioning_to_strength=0.5,
        )


def test_set_area_stores_latent_units_and_strength() -> None:
    source = cond()
    (out,) = run("ConditioningSetArea", conditioning=source, width=512, height=256, x=64, y=136, strength=0.7)
    assert out[0][1]["area"] == (32, 64, 17, 8)  # (height, width, y, x) / 8
    assert out[0][1]["strength"] == 0.7
    assert out[0][1]["set_area_to_bounds"] is False
    assert out[0][0] is source[0][0] and "area" not in source[0][1]


def test_set_timestep_range() -> None:
    (out,) = run("ConditioningSetTimestepRange", conditioning=cond() + cond(seed=5), start=0.2, end=0.8)
    assert [(o[1]["start_percent"], o[1]["end_percent"]) for o in out] == [(0.2, 0.8), (0.2, 0.8)]


def test_zero_out_zeros_cond_and_pooled() -> None:
    source = cond()
    (out,) = run("ConditioningZeroOut", conditioning=source)
    assert torch.count_nonzero(out[0][0]) == 0 and out[0][0].shape == source[0][0].shape
    assert torch.count_nonzero(out[0][1]["pooled_output"]) == 0
    assert torch.count_nonzero(source[0][0]) > 0  # input untouched
    (no_pooled,) = run("ConditioningZeroOut", conditioning=cond(pooled=False))
    assert "pooled_output" not in no_pooled[0][1]


def test_concat_appends_the_source_tokens() -> None:
    to, source = cond(seed=1), cond(seed=2)
    (out,) = run("ConditioningConcat", conditioning_to=to, conditioning_from=source)
    assert out[0][0].shape == (1, 154, 8)
    torch.testing.assert_close(out[0][0][:, 77:], source[0][0])


def test_conditioning_inputs_are_checked() -> None:
    with pytest.raises(TypeError, match="conditioning_2"):
        run("ConditioningCombine", conditioning_1=cond(), conditioning_2="nope")
