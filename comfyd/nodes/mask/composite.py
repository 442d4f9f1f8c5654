"""MaskComposite: combine one mask into another at an offset (multiply, add, logic ops, ...)."""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.transform import MAX_RESOLUTION
from comfyd.nodes.mask.basic import as_mask_batch

OPERATIONS = ["multiply", "add", "subtract", "and", "or", "xor"]


def combine(destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str) -> torch.Tensor:
    output = as_mask_batch(destination).clone()
    source = as_mask_batch(source)
    right = min(x + source.shape[-1], output.shape[-1])
    bottom = min(y + source.shape[-2], output.shape[-2])
    if right <= x or bottom <= y:  # the source lands outside the destination
        return torch.clamp(output, 0.0, 1.0)
    src = source[:, : bottom - y, : right - x]
    dst = output[:, y:bottom, x:right]
    if operation == "multiply":
        merged = dst * src
    elif operation == "add":
        merged = dst + src
    elif operation == "subtract":
        merged = dst - src
    elif operation in ("and", "or", "xor"):
        logic = {"and": torch.bitwise_and, "or": torch.bitwise_or, "xor": torch.bitwise_xor}[operation]
        merged = logic(dst.round().bool(), src.round().bool()).float()
    else:
        raise ValueError(f"unknown operation {operation!r}; expected one of {OPERATIONS}")
    output[:, y:bottom, x:right] = merged
    return torch.clamp(output, 0.0, 1.0)


@register_node
class MaskComposite(Node):
    schema = NodeSchema(
        class_type="MaskComposite",
        inputs=(
            Link("destination", "MASK"),
            Link("source", "MASK"),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=1),
            Combo("operation", OPERATIONS),
        ),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )

    def run(
        self, ctx: NodeContext, destination: torch.Tensor, source: torch.Tensor, x: int, y: int, operation: str
    ) -> tuple[torch.Tensor]:
        return (combine(destination, source, x, y, operation),)
