"""ImagePadForOutpaint: grow the canvas with grey and return the mask of what is to be painted."""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import MAX_RESOLUTION


def feather_weights(height: int, width: int, pad: tuple[int, int, int, int], feathering: int) -> torch.Tensor:
    """Mask values over the original picture: ((f - d) / f)^2 within `feathering` pixels of a
    padded side (d = distance to the nearest padded side), else 0. `pad` is (left, top, right, bottom)."""
    weights = torch.zeros((height, width), dtype=torch.float32)
    if not (feathering > 0 and feathering * 2 < height and feathering * 2 < width):
        return weights
    left, top, right, bottom = pad
    rows = torch.arange(height, dtype=torch.float64)[:, None].expand(height, width)
    cols = torch.arange(width, dtype=torch.float64)[None, :].expand(height, width)
    far_h = torch.full_like(rows, float(height))
    far_w = torch.full_like(cols, float(width))
    distance = torch.minimum(
        torch.minimum(rows if top else far_h, (height - rows) if bottom else far_h),
        torch.minimum(cols if left else far_w, (width - cols) if right else far_w),
    )
    ramp = (feathering - distance) / feathering
    # Python floats in ComfyUI's loop: computed in double, stored as float32.
    return torch.where(distance < feathering, ramp * ramp, torch.zeros_like(ramp)).to(torch.float32)


@register_node
class ImagePadForOutpaint(Node):
    schema = NodeSchema(
        class_type="ImagePadForOutpaint",
        inputs=(
            Link("image", "IMAGE"),
            Int("left", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("top", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("right", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("bottom", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("feathering", default=40, min=0, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(OutputSpec("IMAGE"), OutputSpec("MASK")),
        category="image",
    )

    def run(
        self, ctx: NodeContext, image: torch.Tensor, left: int, top: int, right: int, bottom: int, feathering: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, height, width, channels = image.shape
        canvas = torch.full((batch, height + top + bottom, width + left + right, channels), 0.5, dtype=torch.float32)
        canvas[:, top : top + height, left : left + width, :] = image
        mask = torch.ones((height + top + bottom, width + left + right), dtype=torch.float32)
        mask[top : top + height, left : left + width] = feather_weights(
            height, width, (left, top, right, bottom), feathering
        )
        return canvas, mask.unsqueeze(0)
