"""Mask edges: GrowMask (dilate or erode), FeatherMask (linear ramps at the borders)."""

from __future__ import annotations

import numpy as np
import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import MAX_RESOLUTION
from comfyd.nodes.mask.basic import as_mask_batch


def grow(mask: torch.Tensor, expand: int, tapered_corners: bool) -> torch.Tensor:
    """Dilate (expand > 0) or erode (expand < 0) each mask |expand| times with a 3x3 cross
    (tapered corners) or square footprint; grey-level, so soft masks stay soft."""
    import scipy.ndimage  # here, not at import: it costs every start ~0.3 s and few workflows grow masks

    corner = 0 if tapered_corners else 1
    footprint = np.array([[corner, 1, corner], [1, 1, 1], [corner, 1, corner]])
    step = scipy.ndimage.grey_erosion if expand < 0 else scipy.ndimage.grey_dilation
    out = []
    for single in as_mask_batch(mask):
        values = single.cpu().numpy()
        for _ in range(abs(expand)):
            values = step(values, footprint=footprint)
        out.append(torch.from_numpy(values))
    return torch.stack(out, dim=0)


@register_node
class GrowMask(Node):
    schema = NodeSchema(
        class_type="GrowMask",
        inputs=(
            Link("mask", "MASK"),
            Int("expand", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, step=1),
            Boolean("tapered_corners", default=True),
        ),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(self, ctx: NodeContext, mask: torch.Tensor, expand: int, tapered_corners: bool) -> tuple[torch.Tensor]:
        return (grow(mask, expand, tapered_corners),)


def feather(mask: torch.Tensor, left: int, top: int, right: int, bottom: int) -> torch.Tensor:
    """Scale the outer `left`/`top`/`right`/`bottom` rows and columns by (k + 1) / n.

    Like ComfyUI, the right and bottom ramps index from the far edge as -k, so their first step
    (k = 0) lands on the first column/row rather than the last: the result is ComfyUI's, quirk
    included.
    """
    out = as_mask_batch(mask).clone()
    left = min(left, out.shape[-1])
    right = min(right, out.shape[-1])
    top = min(top, out.shape[-2])
    bottom = min(bottom, out.shape[-2])
    for k in range(left):
        out[:, :, k] *= (k + 1.0) / left
    for k in range(right):
        out[:, :, -k] *= (k + 1) / right
    for k in range(top):
        out[:, k, :] *= (k + 1) / top
    for k in range(bottom):
        out[:, -k, :] *= (k + 1) / bottom
    return out


@register_node
class FeatherMask(Node):
    schema = NodeSchema(
        class_type="FeatherMask",
        inputs=(
            Link("mask", "MASK"),
            Int("left", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("top", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("right", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("bottom", default=0, min=0, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(
        self, ctx: NodeContext, mask: torch.Tensor, left: int, top: int, right: int, bottom: int
    ) -> tuple[torch.Tensor]:
        return (feather(mask, left, top, right, bottom),)
