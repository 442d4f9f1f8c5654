"""EmptyLTXVLatentVideo: an all-zero LTX-Video latent, [batch, 128, (length - 1) // 8 + 1,
height // 32, width // 32], with ComfyUI's inputs and category (comfy_extras/nodes_lt.py)."""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels

MAX_RESOLUTION = 16384
CHANNELS = 128
FACTOR = 32
FRAMES_PER_LATENT = 8  # temporal compression: 1 + 8k frames make k + 1 latent frames


def ltxv_latent_shape(width: int, height: int, length: int, batch_size: int) -> list[int]:
    return [batch_size, CHANNELS, (length - 1) // FRAMES_PER_LATENT + 1, height // FACTOR, width // FACTOR]


@register_node
class EmptyLTXVLatentVideo(Node):
    schema = NodeSchema(
        class_type="EmptyLTXVLatentVideo",
        inputs=(
            Int("width", default=768, min=64, max=MAX_RESOLUTION, step=32),
            Int("height", default=512, min=64, max=MAX_RESOLUTION, step=32),
            Int("length", default=97, min=1, max=MAX_RESOLUTION, step=8),
            Int("batch_size", default=1, min=1, max=4096, step=None),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent/video/ltxv",
    )

    def run(
        self, ctx: NodeContext, width: int, height: int, length: int, batch_size: int = 1
    ) -> tuple[dict[str, Any]]:
        # Every frame is a picture of width x height: the pixel limit holds for all of them.
        check_latent_pixels(ctx.env.settings, width, height * length)
        return ({"samples": torch.zeros(ltxv_latent_shape(width, height, length, batch_size))},)
