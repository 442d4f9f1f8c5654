"""Between masks and images: MaskToImage, ImageToMask."""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Link, Node, NodeSchema, OutputSpec, register_node

CHANNELS = ["red", "green", "blue", "alpha"]


@register_node
class MaskToImage(Node):
    schema = NodeSchema(
        class_type="MaskToImage",
        inputs=(Link("mask", "MASK"),),
        outputs=(OutputSpec("IMAGE"),),
        category="mask",
    )

    def run(self, ctx: NodeContext, mask: torch.Tensor) -> tuple[torch.Tensor]:
        grey = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1])).movedim(1, -1)
        return (grey.expand(-1, -1, -1, 3),)


@register_node
class ImageToMask(Node):
    schema = NodeSchema(
        class_type="ImageToMask",
        inputs=(Link("image", "IMAGE"), Combo("channel", CHANNELS)),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(self, ctx: NodeContext, image: torch.Tensor, channel: str) -> tuple[torch.Tensor]:
        index = CHANNELS.index(channel)
        if index >= image.shape[-1]:
            raise ValueError(f"the image has {image.shape[-1]} channels, so no {channel} channel")
        return (image[:, :, :, index],)
