"""Combining latents in place: LatentComposite, LatentCompositeMasked, LatentBlend.

Offsets are in pixels and become latent cells by integer division by 8, as in ComfyUI.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.compositing import composite
from comfyd.nodes.image.transform import MAX_RESOLUTION, common_upscale
from comfyd.nodes.latent.basic import LATENT_FACTOR, _samples

Latent = dict[str, Any]


def feathered_paste(target: torch.Tensor, source: torch.Tensor, x: int, y: int, feather: int) -> torch.Tensor:
    """LatentComposite's paste (cells): `source` over a copy of `target` at (x, y), with its
    inner edges ramped over `feather` cells where they do not touch the target's border."""
    out = target.clone()
    source = source[:, :, : target.shape[2] - y, : target.shape[3] - x]
    region = (slice(None), slice(None), slice(y, y + source.shape[2]), slice(x, x + source.shape[3]))
    if feather == 0:
        out[region] = source
        return out
    weight = torch.ones_like(source)
    for t in range(feather):
        ramp = (1.0 / feather) * (t + 1)
        if y != 0:
            weight[:, :, t : 1 + t, :] *= ramp
        if y + source.shape[2] < target.shape[2]:
            weight[:, :, weight.shape[2] - 1 - t : weight.shape[2] - t, :] *= ramp
        if x != 0:
            weight[:, :, :, t : 1 + t] *= ramp
        if x + source.shape[3] < target.shape[3]:
            weight[:, :, :, weight.shape[3] - 1 - t : weight.shape[3] - t] *= ramp
    out[region] = source * weight + out[region] * (torch.ones_like(weight) - weight)
    return out


@register_node
class LatentComposite(Node):
    schema = NodeSchema(
        class_type="LatentComposite",
        inputs=(
            Link("samples_to", "LATENT"),
            Link("samples_from", "LATENT"),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("feather", default=0, min=0, max=MAX_RESOLUTION, step=8),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent",
    )

    def run(
        self, ctx: NodeContext, samples_to: Latent, samples_from: Latent, x: int, y: int, feather: int = 0
    ) -> tuple[Latent]:
        target, source = _samples(samples_to, "samples_to"), _samples(samples_from, "samples_from")
        out = dict(samples_to)
        out["samples"] = feathered_paste(
            target, source, x // LATENT_FACTOR, y // LATENT_FACTOR, feather // LATENT_FACTOR
        )
        return (out,)


@register_node
class LatentCompositeMasked(Node):
    schema = NodeSchema(
        class_type="LatentCompositeMasked",
        inputs=(
            Link("destination", "LATENT"),
            Link("source", "LATENT"),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Boolean("resize_source", default=False),
            Link("mask", "MASK", optional=True),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent",
    )

    def run(
        self,
        ctx: NodeContext,
        destination: Latent,
        source: Latent,
        x: int,
        y: int,
        resize_source: bool,
        mask: torch.Tensor | None = None,
    ) -> tuple[Latent]:
        canvas = _samples(destination, "destination").clone()
        out = dict(destination)
        out["samples"] = composite(canvas, _samples(source, "source"), x, y, mask, LATENT_FACTOR, resize_source)
        return (out,)


@register_node
class LatentBlend(Node):
    schema = NodeSchema(
        class_type="LatentBlend",
        inputs=(
            Link("samples1", "LATENT"),
            Link("samples2", "LATENT"),
            # ComfyUI declares these bounds as ints.
            Float("blend_factor", default=0.5, min=0, max=1, step=0.01),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="_for_testing",
    )

    def run(self, ctx: NodeContext, samples1: Latent, samples2: Latent, blend_factor: float) -> tuple[Latent]:
        first, second = _samples(samples1, "samples1"), _samples(samples2, "samples2")
        if first.shape != second.shape:
            second = common_upscale(second, first.shape[3], first.shape[2], "bicubic", "center")
        out = dict(samples1)
        out["samples"] = first * blend_factor + second * (1 - blend_factor)
        return (out,)
