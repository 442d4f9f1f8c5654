"""Pixel-space image operations: ImageScale, ImageScaleBy, ImageScaleToTotalPixels, ImageInvert
(and ComfyUI's upscale rule)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.sampling.latent_resize import center_crop

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]
CROP_METHODS = ["disabled", "center"]
# ComfyUI's MAX_RESOLUTION: the largest width/height its image nodes accept.
MAX_RESOLUTION = 16384


def _lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Lanczos through Pillow on 8-bit images, as ComfyUI does (so values are quantised to 1/255)."""
    results = []
    for image in samples:
        hwc = np.clip(255.0 * image.movedim(0, -1).cpu().numpy(), 0, 255).astype(np.uint8)
        single_channel = hwc.shape[-1] == 1
        pil = Image.fromarray(hwc[..., 0] if single_channel else hwc)
        resized = (
            np.asarray(pil.resize((width, height), resample=Image.Resampling.LANCZOS), dtype=np.float32)
            / 255.0
        )
        if single_channel:
            resized = resized[..., None]
        results.append(torch.from_numpy(resized).movedim(-1, 0))
    return torch.stack(results).to(samples.device, samples.dtype)


def common_upscale(
    samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str
) -> torch.Tensor:
    """Resize NCHW `samples` to height x width the way ComfyUI's `comfy.utils.common_upscale` does.

    `crop="center"` first crops to the target aspect ratio; the resize itself is torch's
    interpolate for nearest-exact/bilinear/area/bicubic (align_corners unset, no clamping) and
    Pillow for lanczos.
    """
    if upscale_method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale_method {upscale_method!r}; expected one of {UPSCALE_METHODS}")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {CROP_METHODS}")
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}")
    source = center_crop(samples, width, height) if crop == "center" else samples
    if upscale_method == "lanczos":
        return _lanczos(source, width, height)
    return F.interpolate(source, size=(height, width), mode=upscale_method)


@register_node
class ImageScale(Node):
    schema = NodeSchema(
        class_type="ImageScale",
        inputs=(
            Link("image", "IMAGE"),
            Combo("upscale_method", UPSCALE_METHODS),
            Int("width", default=512, min=0, max=MAX_RESOLUTION, step=1),
            Int("height", default=512, min=0, max=MAX_RESOLUTION, step=1),
            Combo("crop", CROP_METHODS),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image/upscaling",
    )

    def run(
        self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, width: int, height: int, crop: str
    ) -> tuple[torch.Tensor]:
        if width == 0 and height == 0:
            return (image,)
        samples = image.movedim(-1, 1)
        # A zero side keeps the aspect ratio of the input.
        if width == 0:
            width = max(1, round(samples.shape[3] * height / samples.shape[2]))
        elif height == 0:
            height = max(1, round(samples.shape[2] * width / samples.shape[3]))
        return (common_upscale(samples, width, height, upscale_method, crop).movedim(1, -1),)


@register_node
class ImageScaleBy(Node):
    schema = NodeSchema(
        class_type="ImageScaleBy",
        inputs=(
            Link("image", "IMAGE"),
            Combo("upscale_method", UPSCALE_METHODS),
            Float("scale_by", default=1.0, min=0.01, max=8.0, step=0.01),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image/upscaling",
    )

    def run(
        self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, scale_by: float
    ) -> tuple[torch.Tensor]:
        samples = image.movedim(-1, 1)
        width = round(samples.shape[3] * scale_by)
        height = round(samples.shape[2] * scale_by)
        return (common_upscale(samples, width, height, upscale_method, "disabled").movedim(1, -1),)


@register_node
class ImageScaleToTotalPixels(Node):
    schema = NodeSchema(
        class_type="ImageScaleToTotalPixels",
        inputs=(
            Link("image", "IMAGE"),
            Combo("upscale_method", UPSCALE_METHODS, combo_as_options=True),
            Float("megapixels", default=1.0, min=0.01, max=16.0, step=0.01),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image/upscaling",
        display_name="Scale Image to Total Pixels",
    )

    def run(
        self, ctx: NodeContext, image: torch.Tensor, upscale_method: str, megapixels: float
    ) -> tuple[torch.Tensor]:
        samples = image.movedim(-1, 1)
        # A "megapixel" is 1024 * 1024 pixels here, as in ComfyUI; the aspect ratio is kept.
        total = int(megapixels * 1024 * 1024)
        scale_by = math.sqrt(total / (samples.shape[3] * samples.shape[2]))
        width = round(samples.shape[3] * scale_by)
        height = round(samples.shape[2] * scale_by)
        return (common_upscale(samples, width, height, upscale_method, "disabled").movedim(1, -1),)


@register_node
class ImageInvert(Node):
    schema = NodeSchema(
        class_type="ImageInvert",
        inputs=(Link("image", "IMAGE"),),
        outputs=(OutputSpec("IMAGE"),),
        category="image",
    )

    def run(self, ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor]:
        return (1.0 - image,)
