"""EmptyHunyuanLatentVideo: an all-zero 16-channel video latent (HunyuanVideo and Wan 2.1 use it),
[batch, 16, (length - 1) // 4 + 1, height // 8, width // 8], with ComfyUI's inputs and category."""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels

MAX_RESOLUTION = 16384
CHANNELS = 16
FACTOR = 8
FRAMES_PER_LATENT = 4  # temporal compression: 1 + 4k frames make k + 1 latent frames


def video_latent_frames(length: int) -> int:
    return (length - 1) // FRAMES_PER_LATENT + 1


@register_node
class EmptyHunyuanLatentVideo(Node):
    schema = NodeSchema(
        class_type="EmptyHunyuanLatentVideo",
        inputs=(
            Int("width", default=848, min=16, max=MAX_RESOLUTION, step=16),
            Int("height", default=480, min=16, max=MAX_RESOLUTION, step=16),
            Int("length", default=25, min=1, max=MAX_RESOLUTION, step=4),
            Int("batch_size", default=1, min=1, max=4096, step=None),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent/video",
    )

    def run(
        self, ctx: NodeContext, width: int, height: int, length: int, batch_size: int = 1
    ) -> tuple[dict[str, Any]]:
        # Every frame is a picture of width x height: the pixel limit holds for all of them.
        check_latent_pixels(ctx.env.settings, width, height * length)
        shape = [batch_size, CHANNELS, video_latent_frames(length), height // FACTOR, width // FACTOR]
        return ({"samples": torch.zeros(shape)},)
