"""Simple mask nodes: SolidMask, InvertMask, CropMask, ThresholdMask."""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import MAX_RESOLUTION


def as_mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """A MASK as [B, H, W] ([H, W] and [B, 1, H, W] are accepted too)."""
    if not isinstance(mask, torch.Tensor) or mask.ndim < 2:
        raise ValueError("mask must be a MASK tensor [B, H, W] or [H, W]")
    return mask.reshape((-1, mask.shape[-2], mask.shape[-1]))


@register_node
class SolidMask(Node):
    schema = NodeSchema(
        class_type="SolidMask",
        inputs=(
            Float("value", default=1.0, min=0.0, max=1.0, step=0.01),
            Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(self, ctx: NodeContext, value: float, width: int, height: int) -> tuple[torch.Tensor]:
        return (torch.full((1, height, width), value, dtype=torch.float32),)


@register_node
class InvertMask(Node):
    schema = NodeSchema(
        class_type="InvertMask",
        inputs=(Link("mask", "MASK"),),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(self, ctx: NodeContext, mask: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - mask,)


@register_node
class CropMask(Node):
    schema = NodeSchema(
        class_type="CropMask",
        inputs=(
            Link("mask", "MASK"),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("width", default=512, min=1, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=1, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(self, ctx: NodeContext, mask: torch.Tensor, x: int, y: int, width: int, height: int) -> tuple[torch.Tensor]:
        return (as_mask_batch(mask)[:, y : y + height, x : x + width],)


@register_node
class ThresholdMask(Node):
    schema = NodeSchema(
        class_type="ThresholdMask",
        inputs=(Link("mask", "MASK"), Float("value", default=0.5, min=0.0, max=1.0, step=0.01)),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(self, ctx: NodeContext, mask: torch.Tensor, value: float) -> tuple[torch.Tensor]:
        return ((mask > value).float(),)
