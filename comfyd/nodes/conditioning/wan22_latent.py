"""Wan22ImageToVideoLatent: the Wan 2.2 TI2V 5B latent, empty or starting from an image.

As ComfyUI's node: a [1, 48, (length - 1) // 4 + 1, height / 16, width / 16] latent. Without a
start image it is all zeros (one sample: ComfyUI ignores batch_size then). With one, the first
`length` start frames are resized (bilinear, centre crop) to width x height and VAE-encoded as one
clip into the first latent frames; the other frames hold the Wan 2.2 latent format's zero (its
per-channel mean, so they sample from scratch), and `noise_mask` is 0 on the encoded frames and 1
after. Both are repeated batch_size times. The sampler then keeps the encoded frames as they are
and the 5B transformer embeds them at timestep 0 (models/families/_wan22_transformer.py).
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels
from comfyd.models.families.wan22 import LATENT_CHANNELS, LATENTS_MEAN, LATENTS_STD
from comfyd.models.handles import VaeHandle
from comfyd.models.vae_codec import vae_encode
from comfyd.nodes.image.transform import common_upscale
from comfyd.nodes.latent.video_latent import MAX_RESOLUTION, video_latent_frames

FACTOR = 16


def latent_format_out(latent: torch.Tensor) -> torch.Tensor:
    """Sampler space -> VAE latent with the Wan 2.2 format (ComfyUI's Wan22().process_out)."""
    mean = torch.tensor(LATENTS_MEAN, dtype=latent.dtype).view(1, -1, 1, 1, 1)
    std = torch.tensor(LATENTS_STD, dtype=latent.dtype).view(1, -1, 1, 1, 1)
    return latent * std + mean


@register_node
class Wan22ImageToVideoLatent(Node):
    schema = NodeSchema(
        class_type="Wan22ImageToVideoLatent",
        inputs=(
            Link("vae", "VAE"),
            Int("width", default=1280, min=32, max=MAX_RESOLUTION, step=32),
            Int("height", default=704, min=32, max=MAX_RESOLUTION, step=32),
            Int("length", default=49, min=1, max=MAX_RESOLUTION, step=4),
            Int("batch_size", default=1, min=1, max=4096, step=None),
            Link("start_image", "IMAGE", optional=True),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="conditioning/inpaint",
    )

    def run(
        self,
        ctx: NodeContext,
        vae: VaeHandle,
        width: int,
        height: int,
        length: int,
        batch_size: int = 1,
        start_image: torch.Tensor | None = None,
    ) -> tuple[dict[str, Any]]:
        check_latent_pixels(ctx.env.settings, width, height * length)
        frames = video_latent_frames(length)
        latent = torch.zeros([1, LATENT_CHANNELS, frames, height // FACTOR, width // FACTOR])
        if start_image is None:
            return ({"samples": latent},)
        if not isinstance(start_image, torch.Tensor) or start_image.ndim != 4:
            raise ValueError("start_image must be an IMAGE [frames, height, width, channels]")
        if vae.latent_channels != LATENT_CHANNELS:
            raise ValueError(
                f"Wan22ImageToVideoLatent needs the Wan 2.2 VAE ({LATENT_CHANNELS} latent channels); "
                f"this VAE has {vae.latent_channels}"
            )
        start = common_upscale(start_image[:length].movedim(-1, 1), width, height, "bilinear", "center")
        encoded = vae_encode(vae, start.movedim(1, -1)[..., :3])
        mask = torch.ones([1, 1, frames, latent.shape[-2], latent.shape[-1]])
        kept = encoded.shape[2]
        latent[:, :, :kept] = encoded
        mask[:, :, :kept] = 0.0
        latent = latent_format_out(latent) * mask + latent * (1.0 - mask)
        return (
            {
                "samples": latent.repeat((batch_size,) + (1,) * (latent.ndim - 1)),
                "noise_mask": mask.repeat((batch_size,) + (1,) * (mask.ndim - 1)),
            },
        )
