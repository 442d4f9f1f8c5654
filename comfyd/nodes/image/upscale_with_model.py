"""ImageUpscaleWithModel: a picture through an upscale model, in ComfyUI's overlapping tiles."""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.upscale import UpscaleModelHandle, upscale_image


@register_node
class ImageUpscaleWithModel(Node):
    schema = NodeSchema(
        class_type="ImageUpscaleWithModel",
        inputs=(Link("upscale_model", "UPSCALE_MODEL"), Link("image", "IMAGE")),
        outputs=(OutputSpec("IMAGE"),),
        category="image/upscaling",
        display_name="Upscale Image (using Model)",
    )

    def run(self, ctx: NodeContext, upscale_model: UpscaleModelHandle, image: torch.Tensor) -> tuple[torch.Tensor]:
        # A progress report per tile, which is also where an interrupt stops a large picture.
        return (upscale_image(upscale_model, image, progress=ctx.progress),)
