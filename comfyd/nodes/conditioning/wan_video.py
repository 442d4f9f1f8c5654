"""WanImageToVideo: an empty Wan video latent, and the start image for an image-to-video model.

As ComfyUI's node: the start frames are resized (bilinear, centre crop) to width x height, the
rest of the `length` frames are mid-grey, and the whole clip is VAE-encoded into
`concat_latent_image`; `concat_mask` is 0 on the latent frames the start frames cover, 1 after.
Both go into every entry of both conditionings (and `clip_vision_output` when given); the I2V
transformer reads them as its extra input channels (models/families/_wan_i2v.py).
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels
from comfyd.models.handles import VaeHandle
from comfyd.models.text_encoding import Conditioning
from comfyd.models.vae_codec import vae_encode
from comfyd.nodes.conditioning.clip_text import _check_conditioning, set_conditioning_values
from comfyd.nodes.conditioning.clip_vision import require_vision_output
from comfyd.nodes.image.transform import common_upscale
from comfyd.nodes.latent.video_latent import CHANNELS, FACTOR, MAX_RESOLUTION, video_latent_frames

_GREY = 0.5


@register_node
class WanImageToVideo(Node):
    schema = NodeSchema(
        class_type="WanImageToVideo",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("vae", "VAE"),
            Int("width", default=832, min=16, max=MAX_RESOLUTION, step=16),
            Int("height", default=480, min=16, max=MAX_RESOLUTION, step=16),
            Int("length", default=81, min=1, max=MAX_RESOLUTION, step=4),
            Int("batch_size", default=1, min=1, max=4096, step=None),
            Link("clip_vision_output", "CLIP_VISION_OUTPUT", optional=True),
            Link("start_image", "IMAGE", optional=True),
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
        width: int,
        height: int,
        length: int,
        batch_size: int = 1,
        clip_vision_output: Any = None,
        start_image: torch.Tensor | None = None,
    ) -> tuple[Conditioning, Conditioning, dict[str, Any]]:
        positive = _check_conditioning(positive, "positive")
        negative = _check_conditioning(negative, "negative")
        check_latent_pixels(ctx.env.settings, width, height * length)
        frames = video_latent_frames(length)
        latent = torch.zeros([batch_size, CHANNELS, frames, height // FACTOR, width // FACTOR])
        values: dict[str, Any] = {}
        if start_image is not None:
            if not isinstance(start_image, torch.Tensor) or start_image.ndim != 4:
                raise ValueError("start_image must be an IMAGE [frames, height, width, channels]")
            start = common_upscale(start_image[:length].movedim(-1, 1), width, height, "bilinear", "center")
            start = start.movedim(1, -1)
            clip = torch.full((length, height, width, start.shape[-1]), _GREY, dtype=start.dtype)
            clip[: start.shape[0]] = start
            concat = vae_encode(vae, clip[..., :3])
            mask = torch.ones((1, 1, frames, concat.shape[-2], concat.shape[-1]))
            mask[:, :, : video_latent_frames(start.shape[0])] = 0.0
            values.update(concat_latent_image=concat, concat_mask=mask)
        if clip_vision_output is not None:
            values["clip_vision_output"] = require_vision_output(clip_vision_output)
        if values:
            positive = set_conditioning_values(positive, values)
            negative = set_conditioning_values(negative, values)
        return positive, negative, {"samples": latent}
