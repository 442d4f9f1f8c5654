"""Latent arithmetic: LatentAdd, LatentSubtract, LatentMultiply.

A second latent of another size is first resized to the first one's (bilinear, centre crop) and
repeated to its batch size, as ComfyUI's reshape_latent_to does.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.compositing import repeat_to_batch
from comfyd.nodes.image.transform import common_upscale
from comfyd.nodes.latent.basic import _samples

Latent = dict[str, Any]
CATEGORY = "latent/advanced"


def reshape_like(target_shape: torch.Size, latent: torch.Tensor, repeat_batch: bool = True) -> torch.Tensor:
    if latent.shape[1:] != target_shape[1:]:
        latent = common_upscale(latent, target_shape[-1], target_shape[-2], "bilinear", "center")
    return repeat_to_batch(latent, target_shape[0]) if repeat_batch else latent


def _pair_schema(class_type: str) -> NodeSchema:
    return NodeSchema(
        class_type=class_type,
        inputs=(Link("samples1", "LATENT"), Link("samples2", "LATENT")),
        outputs=(OutputSpec("LATENT"),),
        category=CATEGORY,
    )


@register_node
class LatentAdd(Node):
    schema = _pair_schema("LatentAdd")

    def run(self, ctx: NodeContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first = _samples(samples1, "samples1")
        out = dict(samples1)
        out["samples"] = first + reshape_like(first.shape, _samples(samples2, "samples2"))
        return (out,)


@register_node
class LatentSubtract(Node):
    schema = _pair_schema("LatentSubtract")

    def run(self, ctx: NodeContext, samples1: Latent, samples2: Latent) -> tuple[Latent]:
        first = _samples(samples1, "samples1")
        out = dict(samples1)
        out["samples"] = first - reshape_like(first.shape, _samples(samples2, "samples2"))
        return (out,)


@register_node
class LatentMultiply(Node):
    schema = NodeSchema(
        class_type="LatentMultiply",
        inputs=(Link("samples", "LATENT"), Float("multiplier", default=1.0, min=-10.0, max=10.0, step=0.01)),
        outputs=(OutputSpec("LATENT"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, samples: Latent, multiplier: float) -> tuple[Latent]:
        out = dict(samples)
        out["samples"] = _samples(samples) * multiplier
        return (out,)
