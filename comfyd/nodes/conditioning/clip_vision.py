"""Image prompts: CLIPVisionEncode (an image through a CLIP vision tower) and unCLIPConditioning
(an image embedding attached to a conditioning for SD2.1 unCLIP models), as ComfyUI's nodes.py
declares and computes them. The unCLIP vector itself is built at sampling time
(comfyd.sampling.unclip), as ComfyUI builds it in the model's extra conditioning.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.clip_vision import ClipVisionHandle, ClipVisionOutput
from comfyd.models.text_encoding import Conditioning
from comfyd.nodes.conditioning.clip_text import _check_conditioning


def require_clip_vision(clip_vision: Any) -> ClipVisionHandle:
    if clip_vision is None:
        raise RuntimeError(
            "clip_vision input is invalid: None. If it comes from a checkpoint loader, the checkpoint "
            "holds no CLIP vision model; load one with CLIPVisionLoader."
        )
    if not isinstance(clip_vision, ClipVisionHandle):
        raise TypeError(f"clip_vision input must be a CLIP_VISION, got {type(clip_vision).__name__}")
    return clip_vision


def require_vision_output(value: Any) -> ClipVisionOutput:
    if not isinstance(value, ClipVisionOutput):
        raise TypeError(f"clip_vision_output must be a CLIP_VISION_OUTPUT, got {type(value).__name__}")
    return value


@register_node
class CLIPVisionEncode(Node):
    schema = NodeSchema(
        class_type="CLIPVisionEncode",
        inputs=(
            Link("clip_vision", "CLIP_VISION"),
            Link("image", "IMAGE"),
            Combo("crop", ["center", "none"]),
        ),
        outputs=(OutputSpec("CLIP_VISION_OUTPUT"),),
        category="conditioning",
    )

    def run(
        self, ctx: NodeContext, clip_vision: ClipVisionHandle, image: torch.Tensor, crop: str
    ) -> tuple[ClipVisionOutput]:
        tower = require_clip_vision(clip_vision)
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"image must be an IMAGE, got {type(image).__name__}")
        return (tower.encode_image(image, crop=crop == "center"),)


@register_node
class unCLIPConditioning(Node):  # noqa: N801 (ComfyUI's class name)
    schema = NodeSchema(
        class_type="unCLIPConditioning",
        inputs=(
            Link("conditioning", "CONDITIONING"),
            Link("clip_vision_output", "CLIP_VISION_OUTPUT"),
            Float("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
            Float("noise_augmentation", default=0.0, min=0.0, max=1.0, step=0.01),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning",
    )

    def run(
        self,
        ctx: NodeContext,
        conditioning: Conditioning,
        clip_vision_output: ClipVisionOutput,
        strength: float,
        noise_augmentation: float,
    ) -> tuple[Conditioning]:
        conditioning = _check_conditioning(conditioning, "conditioning")
        if strength == 0:
            return (conditioning,)
        output = require_vision_output(clip_vision_output)
        item = {"clip_vision_output": output, "strength": strength, "noise_augmentation": noise_augmentation}
        # Appended to what the entry already holds: several images add up at sampling time.
        return ([[cond, {**options, "unclip_conditioning": [*options.get("unclip_conditioning", []), item]}]
                 for cond, options in conditioning],)  # fmt: skip
