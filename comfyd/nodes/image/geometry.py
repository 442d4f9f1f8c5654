"""Image geometry: ImageCrop, ImageFlip, ImageRotate, GetImageSize."""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import MAX_RESOLUTION

ROTATIONS = ["none", "90 degrees", "180 degrees", "270 degrees"]
FLIP_METHODS = ["x-axis: vertically", "y-axis: horizontally"]


def quarter_turns(rotation: str) -> int:
    """How many 90-degree clockwise turns a rotation choice means."""
    return {"90": 1, "180": 2, "270": 3}.get(rotation.split(" ", 1)[0], 0)


@register_node
class ImageCrop(Node):
    schema = NodeSchema(
        class_type="ImageCrop",
        inputs=(
            Link("image", "IMAGE"),
            Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image/transform",
    )

    def run(
        self, ctx: NodeContext, image: torch.Tensor, width: int, height: int, x: int, y: int
    ) -> tuple[torch.Tensor]:
        # The corner stays inside the picture, so at least one pixel remains.
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y : y + height, x : x + width, :],)


@register_node
class ImageFlip(Node):
    schema = NodeSchema(
        class_type="ImageFlip",
        inputs=(Link("image", "IMAGE"), Combo("flip_method", FLIP_METHODS)),
        outputs=(OutputSpec("IMAGE"),),
        category="image/transform",
    )

    def run(self, ctx: NodeContext, image: torch.Tensor, flip_method: str) -> tuple[torch.Tensor]:
        if flip_method.startswith("x"):
            return (torch.flip(image, dims=[1]),)
        if flip_method.startswith("y"):
            return (torch.flip(image, dims=[2]),)
        return (image,)


@register_node
class ImageRotate(Node):
    schema = NodeSchema(
        class_type="ImageRotate",
        inputs=(Link("image", "IMAGE"), Combo("rotation", ROTATIONS)),
        outputs=(OutputSpec("IMAGE"),),
        category="image/transform",
    )

    def run(self, ctx: NodeContext, image: torch.Tensor, rotation: str) -> tuple[torch.Tensor]:
        return (torch.rot90(image, k=quarter_turns(rotation), dims=[2, 1]),)


@register_node
class GetImageSize(Node):
    schema = NodeSchema(
        class_type="GetImageSize",
        inputs=(Link("image", "IMAGE"),),
        outputs=(OutputSpec("INT", "width"), OutputSpec("INT", "height"), OutputSpec("INT", "batch_size")),
        category="image",
        description="Returns width and height of the image, and passes it through unchanged.",
        hidden=("UNIQUE_ID",),
    )

    def run(self, ctx: NodeContext, image: torch.Tensor, **_hidden: Any) -> tuple[int, int, int]:
        return int(image.shape[2]), int(image.shape[1]), int(image.shape[0])
