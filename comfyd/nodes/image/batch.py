"""Image batches and blank images: ImageBatch, EmptyImage."""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import MAX_RESOLUTION, common_upscale


@register_node
class ImageBatch(Node):
    schema = NodeSchema(
        class_type="ImageBatch",
        inputs=(Link("image1", "IMAGE"), Link("image2", "IMAGE")),
        outputs=(OutputSpec("IMAGE"),),
        category="image",
    )

    def run(self, ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor) -> tuple[torch.Tensor]:
        if image1.shape[1:] != image2.shape[1:]:
            # The second batch takes the first one's size (bilinear, centre crop).
            resized = common_upscale(image2.movedim(-1, 1), image1.shape[2], image1.shape[1], "bilinear", "center")
            image2 = resized.movedim(1, -1)
        return (torch.cat((image1, image2), dim=0),)


@register_node
class EmptyImage(Node):
    schema = NodeSchema(
        class_type="EmptyImage",
        inputs=(
            Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("batch_size", default=1, min=1, max=4096, step=None),
            Int("color", default=0, min=0, max=0xFFFFFF, step=1, extra={"display": "color"}),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image",
    )

    def run(
        self, ctx: NodeContext, width: int, height: int, batch_size: int = 1, color: int = 0
    ) -> tuple[torch.Tensor]:
        channels = [((color >> shift) & 0xFF) / 0xFF for shift in (16, 8, 0)]
        planes = [torch.full([batch_size, height, width, 1], value) for value in channels]
        return (torch.cat(planes, dim=-1),)
