"""Latent nodes: EmptyLatentImage, LatentUpscale(By), RepeatLatentBatch, LatentFromBatch,
SetLatentNoiseMask (ComfyUI's inputs, names, defaults and categories).

LATENT values are dicts {"samples": [B, 4, H/8, W/8], "noise_mask"?: [B, 1, h, w],
"batch_index"?: [int]}; nodes return shallow copies and never modify their input.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels
from comfyd.sampling.latent_resize import CROP_METHODS, UPSCALE_METHODS, resize_latent

MAX_RESOLUTION = 16384
LATENT_CHANNELS = 4
LATENT_FACTOR = 8  # pixels per latent cell
MIN_UPSCALE_PIXELS = 64

Latent = dict[str, Any]


def _samples(latent: Any, name: str = "samples") -> Tensor:
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), Tensor):
        raise ValueError(f"{name} must be a LATENT ({{'samples': tensor [B, C, H, W], ...}})")
    samples = latent["samples"]
    if samples.ndim != 4:
        raise ValueError(f"{name}: latent samples must be [B, C, H, W], got shape {list(samples.shape)}")
    return samples


@register_node
class EmptyLatentImage(Node):
    schema = NodeSchema(
        class_type="EmptyLatentImage",
        inputs=(
            Int("width", default=512, min=16, max=MAX_RESOLUTION, step=8),
            Int("height", default=512, min=16, max=MAX_RESOLUTION, step=8),
            Int("batch_size", default=1, min=1, max=4096, step=None),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent",
        description="A batch of all-zero latents for sampling from pure noise.",
    )

    def run(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[Latent]:
        # Validation checked literal sizes; this catches a size that arrived over a link.
        check_latent_pixels(ctx.env.settings, width, height)
        shape = [batch_size, LATENT_CHANNELS, height // LATENT_FACTOR, width // LATENT_FACTOR]
        return ({"samples": torch.zeros(shape)},)


@register_node
class LatentUpscale(Node):
    schema = NodeSchema(
        class_type="LatentUpscale",
        inputs=(
            Link("samples", "LATENT"),
            Combo("upscale_method", UPSCALE_METHODS),
            Int("width", default=512, min=0, max=MAX_RESOLUTION, step=8),
            Int("height", default=512, min=0, max=MAX_RESOLUTION, step=8),
            Combo("crop", CROP_METHODS),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent",
    )

    def run(
        self, ctx: NodeContext, samples: Latent, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[Latent]:
        source = _samples(samples)
        if width == 0 and height == 0:
            return (samples,)
        # A zero side follows the aspect ratio; every side is at least 64 pixels.
        if width == 0:
            height = max(MIN_UPSCALE_PIXELS, height)
            width = max(MIN_UPSCALE_PIXELS, round(source.shape[-1] * height / source.shape[-2]))
        elif height == 0:
            width = max(MIN_UPSCALE_PIXELS, width)
            height = max(MIN_UPSCALE_PIXELS, round(source.shape[-2] * width / source.shape[-1]))
        else:
            width = max(MIN_UPSCALE_PIXELS, width)
            height = max(MIN_UPSCALE_PIXELS, height)
        check_latent_pixels(ctx.env.settings, width // LATENT_FACTOR * LATENT_FACTOR,
                            height // LATENT_FACTOR * LATENT_FACTOR)
        out = dict(samples)
        out["samples"] = resize_latent(
            source, width // LATENT_FACTOR, height // LATENT_FACTOR, upscale_method, crop
        )
        return (out,)


@register_node
class LatentUpscaleBy(Node):
    schema = NodeSchema(
        class_type="LatentUpscaleBy",
        inputs=(
            Link("samples", "LATENT"),
            Combo("upscale_method", UPSCALE_METHODS),
            Float("scale_by", default=1.5, min=0.01, max=8.0, step=0.01),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent",
    )

    def run(self, ctx: NodeContext, samples: Latent, upscale_method: str, scale_by: float) -> tuple[Latent]:
        source = _samples(samples)
        width = round(source.shape[-1] * scale_by)
        height = round(source.shape[-2] * scale_by)
        # The size of a hires pass depends on the latent it gets, which validation may not know.
        check_latent_pixels(ctx.env.settings, width * LATENT_FACTOR, height * LATENT_FACTOR)
        out = dict(samples)
        out["samples"] = resize_latent(source, width, height, upscale_method, "disabled")
        return (out,)


@register_node
class RepeatLatentBatch(Node):
    schema = NodeSchema(
        class_type="RepeatLatentBatch",
        inputs=(Link("samples", "LATENT"), Int("amount", default=1, min=1, max=64, step=None)),
        outputs=(OutputSpec("LATENT"),),
        category="latent/batch",
    )

    def run(self, ctx: NodeContext, samples: Latent, amount: int) -> tuple[Latent]:
        source = _samples(samples)
        out = dict(samples)
        out["samples"] = source.repeat((amount,) + (1,) * (source.ndim - 1))
        mask = samples.get("noise_mask")
        if mask is not None and mask.shape[0] > 1:
            out["noise_mask"] = mask.repeat((amount,) + (1,) * (mask.ndim - 1))
        if "batch_index" in samples:
            # Each copy continues the noise sequence after the previous one's indices.
            indices = list(samples["batch_index"])
            offset = max(indices) - min(indices) + 1
            out["batch_index"] = indices + [i + copy * offset for copy in range(1, amount) for i in indices]
        return (out,)


@register_node
class LatentFromBatch(Node):
    schema = NodeSchema(
        class_type="LatentFromBatch",
        inputs=(
            Link("samples", "LATENT"),
            Int("batch_index", default=0, min=0, max=63, step=None),
            Int("length", default=1, min=1, max=64, step=None),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent/batch",
    )

    def run(self, ctx: NodeContext, samples: Latent, batch_index: int, length: int) -> tuple[Latent]:
        source = _samples(samples)
        total = source.shape[0]
        start = min(total - 1, batch_index)
        length = min(total - start, length)
        out = dict(samples)
        out["samples"] = source[start : start + length].clone()
        mask = samples.get("noise_mask")
        if mask is not None:
            if mask.shape[0] == 1:
                out["noise_mask"] = mask.clone()
            else:
                if mask.shape[0] < total:
                    mask = mask.repeat(math.ceil(total / mask.shape[0]), 1, 1, 1)[:total]
                out["noise_mask"] = mask[start : start + length].clone()
        if "batch_index" in samples:
            out["batch_index"] = list(samples["batch_index"])[start : start + length]
        else:
            # Remember which samples these were, so they get the noise they had in the batch.
            out["batch_index"] = list(range(start, start + length))
        return (out,)


@register_node
class SetLatentNoiseMask(Node):
    schema = NodeSchema(
        class_type="SetLatentNoiseMask",
        inputs=(Link("samples", "LATENT"), Link("mask", "MASK")),
        outputs=(OutputSpec("LATENT"),),
        category="latent/inpaint",
    )

    def run(self, ctx: NodeContext, samples: Latent, mask: Tensor) -> tuple[Latent]:
        _samples(samples)
        if not isinstance(mask, Tensor) or mask.ndim < 2:
            raise ValueError("mask must be a MASK tensor [B, H, W] or [H, W]")
        out = dict(samples)
        out["noise_mask"] = mask.reshape((-1, 1, mask.shape[-2], mask.shape[-1]))
        return (out,)
