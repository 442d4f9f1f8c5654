"""EmptyFlux2LatentImage: an all-zero Flux.2 latent, 128 channels at 1/16 of the image (the VAE's
32 channels in 2x2 patches). Newer ComfyUI's comfy_extras/nodes_flux.py (not in 0.3.64)."""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels

MAX_RESOLUTION = 16384
CHANNELS = 128
FACTOR = 16


@register_node
class EmptyFlux2LatentImage(Node):
    schema = NodeSchema(
        class_type="EmptyFlux2LatentImage",
        inputs=(
            Int("width", default=1024, min=16, max=MAX_RESOLUTION, step=16),
            Int("height", default=1024, min=16, max=MAX_RESOLUTION, step=16),
            Int("batch_size", default=1, min=1, max=4096, step=None),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent",
    )

    def run(self, ctx: NodeContext, width: int, height: int, batch_size: int = 1) -> tuple[dict[str, Any]]:
        check_latent_pixels(ctx.env.settings, width, height)
        shape = [batch_size, CHANNELS, height // FACTOR, width // FACTOR]
        return ({"samples": torch.zeros(shape)},)
