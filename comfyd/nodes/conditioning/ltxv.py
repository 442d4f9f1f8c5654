"""LTXVConditioning and LTXVImgToVideo: the frame rate and the start image of LTX-Video.

As ComfyUI's comfy_extras/nodes_lt.py: LTXVConditioning sets `frame_rate` in every entry of both
conditionings (the transformer scales its time positions by it). LTXVImgToVideo resizes the
image (bilinear, centre crop) to width x height, VAE-encodes it, writes its latent frames at the
start of an empty [batch, 128, 1 + (length - 1) // 8, height / 32, width / 32] latent and sets a
per-frame `noise_mask` of 1 - strength there, 1 elsewhere: sampling then keeps those frames
(strength 1) and the transformer gives their tokens timestep 0. The conditionings pass through.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels
from comfyd.models.handles import VaeHandle
from comfyd.models.text_encoding import Conditioning
from comfyd.models.vae_codec import vae_encode
from comfyd.nodes.conditioning.clip_text import _check_conditioning, set_conditioning_values
from comfyd.nodes.image.transform import common_upscale
from comfyd.nodes.latent.ltxv_latent import CHANNELS, MAX_RESOLUTION, ltxv_latent_shape


@register_node
class LTXVConditioning(Node):
    schema = NodeSchema(
        class_type="LTXVConditioning",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Float("frame_rate", default=25.0, min=0.0, max=1000.0, step=0.01),
        ),
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative")),
        category="conditioning/video_models",
    )

    def run(
        self, ctx: NodeContext, positive: Conditioning, negative: Conditioning, frame_rate: float
    ) -> tuple[Conditioning, Conditioning]:
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be above 0, got {frame_rate}")
        values = {"frame_rate": float(frame_rate)}
        return (
            set_conditioning_values(_check_conditioning(positive, "positive"), values),
            set_conditioning_values(_check_conditioning(negative, "negative"), values),
        )


@register_node
class LTXVImgToVideo(Node):
    schema = NodeSchema(
        class_type="LTXVImgToVideo",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("vae", "VAE"),
            Link("image", "IMAGE"),
            Int("width", default=768, min=64, max=MAX_RESOLUTION, step=32),
            Int("height", default=512, min=64, max=MAX_RESOLUTION, step=32),
            Int("length", default=97, min=9, max=MAX_RESOLUTION, step=8),
            Int("batch_size", default=1, min=1, max=4096, step=None),
            Float("strength", default=1.0, min=0.0, max=1.0, step=None),
        ),
        outputs=(
            OutputSpec("CONDITIONING", "positive"),
            OutputSpec("CONDITIONING", "negative"),
            OutputSpec("LATENT", "latent"),
        ),
        category="conditioning/video_models",
    )

    def run(
        self,
        ctx: NodeContext,
        positive: Conditioning,
        negative: Conditioning,
        vae: VaeHandle,
        image: torch.Tensor,
        width: int,
        height: int,
        length: int,
        batch_size: int,
        strength: float,
    ) -> tuple[Conditioning, Conditioning, dict[str, Any]]:
        positive = _check_conditioning(positive, "positive")
        negative = _check_conditioning(negative, "negative")
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise ValueError("image must be an IMAGE [frames, height, width, channels]")
        check_latent_pixels(ctx.env.settings, width, height * length)
        pixels = common_upscale(image.movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)
        encoded = vae_encode(vae, pixels[..., :3])
        if encoded.ndim != 5 or encoded.shape[1] != CHANNELS:
            raise ValueError(f"LTXVImgToVideo needs an LTX-Video VAE; this VAE gave a latent {list(encoded.shape)}")
        latent = torch.zeros(ltxv_latent_shape(width, height, length, batch_size))
        if encoded.shape[-2:] != latent.shape[-2:]:
            raise ValueError(
                f"the encoded image is {list(encoded.shape[-2:])} latent cells, the video {list(latent.shape[-2:])}"
            )
        kept = min(encoded.shape[2], latent.shape[2])
        latent[:, :, :kept] = encoded[:, :, :kept]
        mask = torch.ones((batch_size, 1, latent.shape[2], 1, 1), dtype=torch.float32)
        mask[:, :, :kept] = 1.0 - strength
        return positive, negative, {"samples": latent, "noise_mask": mask}
