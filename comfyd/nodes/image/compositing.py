"""Pasting one picture into another: ImageCompositeMasked, and the `composite` rule it shares
with LatentCompositeMasked (ComfyUI's comfy_extras/nodes_mask.py semantics).

`composite` pastes `source` [B, C, h, w] into `destination` [B, C, H, W] at (x, y), given in
pixels; `multiplier` converts them to the tensor's cells (8 for latents). An optional mask,
resized bilinearly to the source, weighs source against destination.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import MAX_RESOLUTION


def repeat_to_batch(tensor: torch.Tensor, batch: int) -> torch.Tensor:
    """The first `batch` items of `tensor`, repeating it cyclically when it has fewer."""
    have = tensor.shape[0]
    if have > batch:
        return tensor[:batch]
    if have < batch:
        repeats = [math.ceil(batch / have)] + [1] * (tensor.ndim - 1)
        return tensor.repeat(repeats)[:batch]
    return tensor


def match_channels(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB against RGBA: the source loses its alpha, or the destination gains an opaque one."""
    if destination.shape[-1] < source.shape[-1]:
        return destination, source[..., : destination.shape[-1]]
    if destination.shape[-1] > source.shape[-1]:
        padded = F.pad(destination, (0, 1))
        padded[..., -1] = 1.0
        return padded, source
    return destination, source


def composite(
    destination: torch.Tensor,
    source: torch.Tensor,
    x: int,
    y: int,
    mask: torch.Tensor | None = None,
    multiplier: int = 8,
    resize_source: bool = False,
) -> torch.Tensor:
    """Paste `source` into `destination` (modified in place and returned); NCHW tensors."""
    source = source.to(destination.device)
    if resize_source:
        source = F.interpolate(source, size=(destination.shape[-2], destination.shape[-1]), mode="bilinear")
    source = repeat_to_batch(source, destination.shape[0])

    x = max(-source.shape[-1] * multiplier, min(x, destination.shape[-1] * multiplier))
    y = max(-source.shape[-2] * multiplier, min(y, destination.shape[-2] * multiplier))
    left, top = x // multiplier, y // multiplier
    right, bottom = left + source.shape[-1], top + source.shape[-2]

    if mask is None:
        weight = torch.ones_like(source)
    else:
        weight = mask.to(destination.device, copy=True).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        weight = F.interpolate(weight, size=(source.shape[-2], source.shape[-1]), mode="bilinear")
        weight = repeat_to_batch(weight, source.shape[0])

    # Only the part of the source that lands inside the destination.
    visible_w = destination.shape[-1] - left + min(0, x)
    visible_h = destination.shape[-2] - top + min(0, y)
    weight = weight[:, :, :visible_h, :visible_w]
    if weight.ndim < source.ndim:
        weight = weight.unsqueeze(1)
    inverse = torch.ones_like(weight) - weight
    pasted = weight * source[..., :visible_h, :visible_w]
    kept = inverse * destination[..., top:bottom, left:right]
    destination[..., top:bottom, left:right] = pasted + kept
    return destination


@register_node
class ImageCompositeMasked(Node):
    schema = NodeSchema(
        class_type="ImageCompositeMasked",
        inputs=(
            Link("destination", "IMAGE"),
            Link("source", "IMAGE"),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Boolean("resize_source", default=False),
            Link("mask", "MASK", optional=True),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image",
    )

    def run(
        self,
        ctx: NodeContext,
        destination: torch.Tensor,
        source: torch.Tensor,
        x: int,
        y: int,
        resize_source: bool,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor]:
        destination, source = match_channels(destination, source)
        canvas = destination.clone().movedim(-1, 1)
        result = composite(canvas, source.movedim(-1, 1), x, y, mask, 1, resize_source)
        return (result.movedim(1, -1),)
