"""LoadImageMask: one channel of a picture in the input folder, as a MASK."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.image.save_load import (
    EMPTY_MASK_SIZE,
    _file_digest,
    check_image_name,
    list_input_images,
    resolve_image_path,
)

CHANNELS = ["alpha", "red", "green", "blue"]


def load_mask_file(path: Any, channel: str, max_pixels: int | None = None) -> torch.Tensor:
    """MASK [1, H, W] of `channel` (alpha is inverted: transparent = 1), from the first frame."""
    with Image.open(path) as opened:
        if max_pixels is not None and opened.width * opened.height > max_pixels:
            raise ValueError(f"image is {opened.width}x{opened.height}, more than the {max_pixels} pixels allowed")
        picture = ImageOps.exif_transpose(opened)
        if picture.getbands() != ("R", "G", "B", "A"):
            if picture.mode == "I":
                picture = picture.point(lambda value: value * (1 / 255))
            picture = picture.convert("RGBA")
        band = channel[0].upper()
        if band not in picture.getbands():
            return torch.zeros((1, EMPTY_MASK_SIZE, EMPTY_MASK_SIZE), dtype=torch.float32)
        values = torch.from_numpy(np.array(picture.getchannel(band)).astype(np.float32) / 255.0)
    if band == "A":
        values = 1.0 - values
    return values.unsqueeze(0)


@register_node
class LoadImageMask(Node):
    schema = NodeSchema(
        class_type="LoadImageMask",
        inputs=(
            Combo("image", list_input_images, image_upload=True, validator=check_image_name),
            Combo("channel", CHANNELS),
        ),
        outputs=(OutputSpec("MASK"),),
        category="mask",
    )
    # ComfyUI's IS_CHANGED is the file's SHA-256, recorded in the prompt as LoadImage's is.
    fingerprint_is_comfyui_is_changed = True

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        try:
            return _file_digest(resolve_image_path(ctx.env, str(inputs.get("image", ""))))
        except (OSError, ValueError):
            return None  # run() reports the problem

    def run(self, ctx: NodeContext, image: str, channel: str) -> tuple[torch.Tensor]:
        path = resolve_image_path(ctx.env, image)
        if not path.is_file():
            raise FileNotFoundError(f"Invalid image file: {image} (no such file in {path.parent})")
        return (load_mask_file(path, channel, ctx.env.settings.max_image_pixels),)
