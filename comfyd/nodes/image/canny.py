"""Canny: edge map of an image (ComfyUI's preprocessor node).

ComfyUI computes it with kornia's `canny` (grey conversion, 5x5 Gaussian, Sobel gradients,
non-maximum suppression, hysteresis); comfyd calls the same function so the edges are the same.
"""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node


def canny_edges(image: torch.Tensor, low_threshold: float, high_threshold: float) -> torch.Tensor:
    """IMAGE [B, H, W, 3] -> its edge map as an RGB IMAGE of 0s and 1s."""
    from kornia.filters import canny  # imported here: only this node needs kornia

    _magnitude, edges = canny(image.movedim(-1, 1), low_threshold, high_threshold)
    return edges.repeat(1, 3, 1, 1).movedim(1, -1)


@register_node
class Canny(Node):
    schema = NodeSchema(
        class_type="Canny",
        inputs=(
            Link("image", "IMAGE"),
            Float("low_threshold", default=0.4, min=0.01, max=0.99, step=0.01),
            Float("high_threshold", default=0.8, min=0.01, max=0.99, step=0.01),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image/preprocessors",
    )

    def run(
        self, ctx: NodeContext, image: torch.Tensor, low_threshold: float, high_threshold: float
    ) -> tuple[torch.Tensor]:
        if low_threshold > high_threshold:
            raise ValueError(f"low_threshold {low_threshold} is above high_threshold {high_threshold}")
        return (canny_edges(image[..., :3], low_threshold, high_threshold),)
