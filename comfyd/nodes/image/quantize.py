"""ImageQuantize: reduce a picture to a palette of N colours through Pillow, as ComfyUI does."""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Int, Link, Node, NodeSchema, OutputSpec, register_node

DITHER_METHODS = ["none", "floyd-steinberg", "bayer-2", "bayer-4", "bayer-8", "bayer-16"]


def _bayer_matrix(level: int) -> np.ndarray:
    """The normalised 2^level x 2^level ordered-dither matrix, centred on zero."""
    if level == 0:
        return np.zeros((1, 1), dtype=np.float32)
    q = 4**level
    inner = q * _bayer_matrix(level - 1)
    return np.block([[inner - 1.5, inner + 0.5], [inner + 1.5, inner - 0.5]]) / q


def _bayer_dither(picture: Image.Image, palette: Image.Image, order: int) -> Image.Image:
    colours = len(palette.getpalette()) // 3
    spread = 2 * 256 / colours
    matrix = torch.from_numpy(spread * _bayer_matrix(int(math.log2(order))) + 0.5)
    pixels = torch.from_numpy(np.array(picture).astype(np.float32))
    reps_h = math.ceil(pixels.shape[0] / matrix.shape[0])
    reps_w = math.ceil(pixels.shape[1] / matrix.shape[1])
    tiled = matrix.tile(reps_h, reps_w).unsqueeze(-1)
    pixels.add_(tiled[: pixels.shape[0], : pixels.shape[1]]).clamp_(0, 255)
    shifted = Image.fromarray(pixels.to(dtype=torch.uint8).numpy())
    return shifted.quantize(palette=palette, dither=Image.Dither.NONE)


def quantize_picture(picture: Image.Image, colors: int, dither: str) -> Image.Image:
    # The palette comes from a first quantize (Pillow cannot dither to an adaptive palette directly).
    palette = picture.quantize(colors=colors)
    if dither == "none":
        return picture.quantize(palette=palette, dither=Image.Dither.NONE)
    if dither == "floyd-steinberg":
        return picture.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
    if dither.startswith("bayer-"):
        return _bayer_dither(picture, palette, int(dither.split("-")[-1]))
    raise ValueError(f"unknown dither {dither!r}; expected one of {DITHER_METHODS}")


@register_node
class ImageQuantize(Node):
    schema = NodeSchema(
        class_type="ImageQuantize",
        inputs=(
            Link("image", "IMAGE"),
            Int("colors", default=256, min=1, max=256, step=1),
            Combo("dither", DITHER_METHODS, combo_as_options=True),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="image/postprocessing",
    )

    def run(self, ctx: NodeContext, image: torch.Tensor, colors: int, dither: str) -> tuple[torch.Tensor]:
        if image.shape[-1] != 3:
            raise ValueError(f"ImageQuantize needs RGB images, got {image.shape[-1]} channels")
        result = torch.zeros_like(image)
        for index, frame in enumerate(image):
            # 8 bits by truncation, as ComfyUI converts.
            picture = Image.fromarray((frame.cpu() * 255).to(torch.uint8).numpy(), mode="RGB")
            quantized = quantize_picture(picture, colors, dither)
            result[index] = torch.tensor(np.array(quantized.convert("RGB"))).float() / 255
        return (result,)
