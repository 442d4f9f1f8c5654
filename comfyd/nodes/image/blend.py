"""ImageBlend: mix two pictures with a blend mode (ComfyUI's post-processing node)."""

from __future__ import annotations

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.compositing import match_channels
from comfyd.nodes.image.transform import common_upscale

BLEND_MODES = ["normal", "multiply", "screen", "overlay", "soft_light", "difference"]


def _soft_light_curve(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x <= 0.25, ((16 * x - 12) * x + 4) * x, torch.sqrt(x))


def blend_layers(base: torch.Tensor, layer: torch.Tensor, mode: str) -> torch.Tensor:
    """The blended layer before mixing, for `mode` (W3C-style formulas, as ComfyUI writes them)."""
    if mode == "normal":
        return layer
    if mode == "multiply":
        return base * layer
    if mode == "screen":
        return 1 - (1 - base) * (1 - layer)
    if mode == "overlay":
        return torch.where(base <= 0.5, 2 * base * layer, 1 - 2 * (1 - base) * (1 - layer))
    if mode == "soft_light":
        return torch.where(
            layer <= 0.5,
            base - (1 - 2 * layer) * base * (1 - base),
            base + (2 * layer - 1) * (_soft_light_curve(base) - base),
        )
    if mode == "difference":
        return base - layer
    raise ValueError(f"unknown blend_mode {mode!r}; expected one of {BLEND_MODES}")


@register_node
class ImageBlend(Node):
    schema = NodeSchema(
        class_type="ImageBlend",
        inputs=(
            Link("image1", "IMAGE"),
            Link("image2", "IMAGE"),
            Float("blend_factor", default=0.5, min=0.0, max=1.0, step=0.01),
            Combo("blend_mode", BLEND_MODES, combo_as_options=True),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image/postprocessing",
    )

    def run(
        self, ctx: NodeContext, image1: torch.Tensor, image2: torch.Tensor, blend_factor: float, blend_mode: str
    ) -> tuple[torch.Tensor]:
        image1, image2 = match_channels(image1, image2)
        image2 = image2.to(image1.device)
        if image1.shape != image2.shape:
            resized = common_upscale(image2.permute(0, 3, 1, 2), image1.shape[2], image1.shape[1], "bicubic", "center")
            image2 = resized.permute(0, 2, 3, 1)
        blended = blend_layers(image1, image2, blend_mode)
        mixed = image1 * (1 - blend_factor) + blended * blend_factor
        return (torch.clamp(mixed, 0, 1),)
