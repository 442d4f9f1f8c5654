"""Gaussian filters on images: ImageBlur, ImageSharpen (ComfyUI's post-processing nodes).

Both convolve each channel with a (2r+1)-square Gaussian sampled on [-1, 1] (so `sigma` is in
units of the radius, not of pixels), after reflect-padding the picture by r.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Int, Link, Node, NodeSchema, OutputSpec, register_node

CATEGORY = "image/postprocessing"


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """A size x size Gaussian over the square [-1, 1]^2, normalised to sum 1."""
    axis = torch.linspace(-1, 1, size)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    distance = torch.sqrt(xs * xs + ys * ys)
    weights = torch.exp(-(distance * distance) / (2.0 * sigma * sigma))
    return weights / weights.sum()


def _filter(image: torch.Tensor, kernel: torch.Tensor, radius: int) -> torch.Tensor:
    """Convolve each channel of IMAGE [B, H, W, C] with `kernel`, reflect-padded by `radius`."""
    channels = image.shape[-1]
    weight = kernel.repeat(channels, 1, 1).unsqueeze(1)
    planar = F.pad(image.permute(0, 3, 1, 2), (radius, radius, radius, radius), "reflect")
    # ComfyUI pads twice (reflect, then the convolution's zeros) and crops the second pad off.
    filtered = F.conv2d(planar, weight, padding=kernel.shape[-1] // 2, groups=channels)
    return filtered[:, :, radius:-radius, radius:-radius].permute(0, 2, 3, 1)


@register_node
class ImageBlur(Node):
    schema = NodeSchema(
        class_type="ImageBlur",
        inputs=(
            Link("image", "IMAGE"),
            Int("blur_radius", default=1, min=1, max=31, step=1),
            Float("sigma", default=1.0, min=0.1, max=10.0, step=0.1),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, image: torch.Tensor, blur_radius: int, sigma: float) -> tuple[torch.Tensor]:
        if blur_radius == 0:
            return (image,)
        return (_filter(image, gaussian_kernel(blur_radius * 2 + 1, sigma), blur_radius),)


@register_node
class ImageSharpen(Node):
    schema = NodeSchema(
        class_type="ImageSharpen",
        inputs=(
            Link("image", "IMAGE"),
            Int("sharpen_radius", default=1, min=1, max=31, step=1),
            Float("sigma", default=1.0, min=0.1, max=10.0, step=0.01),
            Float("alpha", default=1.0, min=0.0, max=5.0, step=0.01),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, image: torch.Tensor, sharpen_radius: int, sigma: float, alpha: float
    ) -> tuple[torch.Tensor]:
        if sharpen_radius == 0:
            return (image,)
        size = sharpen_radius * 2 + 1
        # An unsharp mask as one kernel: -10*alpha times the Gaussian, plus what makes it sum to 1
        # at the centre.
        kernel = (gaussian_kernel(size, sigma) * -(alpha * 10)).to(image.dtype)
        centre = size // 2
        kernel[centre, centre] = kernel[centre, centre] - kernel.sum() + 1.0
        return (torch.clamp(_filter(image, kernel, sharpen_radius), 0, 1),)
