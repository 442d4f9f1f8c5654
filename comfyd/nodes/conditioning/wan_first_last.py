"""WanFirstLastFrameToVideo: an empty Wan video latent, and a start and/or end image for an
image-to-video model (Wan 2.1 FLF2V, or any Wan I2V transformer).

As ComfyUI's node: the start frames (the first `length`) and the end frames (the last `length`)
are resized (bilinear, centre crop) to width x height and put at the two ends of a mid-grey clip
of `length` frames, which is VAE-encoded into `concat_latent_image`. `concat_mask` is kept per
pixel frame (4 per latent frame, the latent's frame count times 4) and folded into 4 channels
per latent frame: 0 on the first start-frame count + 3 frames and on the last end-frame count,
1 elsewhere; the I2V transformer reads its complement (models/families/_wan_i2v.py). Both go into
every entry of both conditionings, always (a grey clip when no image is given).

The CLIP vision outputs: the start image's alone, the end image's alone, or, with both, a new
output holding only the two `penultimate_hidden_states` joined along the tokens (514 for ViT-H),
which is what a Wan 2.1 image embedder reads (models/families/_wan_clip.py).
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.engine.service_limits import check_latent_pixels
from comfyd.models.clip_vision import ClipVisionOutput
from comfyd.models.handles import VaeHandle
from comfyd.models.text_encoding import Conditioning
from comfyd.models.vae_codec import vae_encode
from comfyd.nodes.conditioning.clip_text import _check_conditioning, set_conditioning_values
from comfyd.nodes.conditioning.clip_vision import require_vision_output
from comfyd.nodes.image.transform import common_upscale
from comfyd.nodes.latent.video_latent import CHANNELS, FACTOR, MAX_RESOLUTION, video_latent_frames

_GREY = 0.5
_FRAMES_PER_LATENT = 4


def _fitted(image: Any, name: str, width: int, height: int) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError(f"{name} must be an IMAGE [frames, height, width, channels]")
    return common_upscale(image[..., :3].movedim(-1, 1), width, height, "bilinear", "center").movedim(1, -1)


def joined_vision_output(start: Any, end: Any) -> ClipVisionOutput | None:
    """The CLIP vision output the node attaches: one of them, or both joined along the tokens."""
    start = require_vision_output(start) if start is not None else None
    end = require_vision_output(end) if end is not None else None
    if start is None or end is None:
        return start or end
    states = torch.cat([start.penultimate_hidden_states, end.penultimate_hidden_states], dim=-2)
    return ClipVisionOutput(last_hidden_state=None, penultimate_hidden_states=states, image_embeds=None)


@register_node
class WanFirstLastFrameToVideo(Node):
    schema = NodeSchema(
        class_type="WanFirstLastFrameToVideo",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("vae", "VAE"),
            Int("width", default=832, min=16, max=MAX_RESOLUTION, step=16),
            Int("height", default=480, min=16, max=MAX_RESOLUTION, step=16),
            Int("length", default=81, min=1, max=MAX_RESOLUTION, step=4),
            Int("batch_size", default=1, min=1, max=4096, step=None),
            Link("clip_vision_start_image", "CLIP_VISION_OUTPUT", optional=True),
            Link("clip_vision_end_image", "CLIP_VISION_OUTPUT", optional=True),
            Link("start_image", "IMAGE", optional=True),
            Link("end_image", "IMAGE", optional=True),
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
        clip_vision_start_image: Any = None,
        clip_vision_end_image: Any = None,
        start_image: torch.Tensor | None = None,
        end_image: torch.Tensor | None = None,
    ) -> tuple[Conditioning, Conditioning, dict[str, Any]]:
        positive = _check_conditioning(positive, "positive")
        negative = _check_conditioning(negative, "negative")
        check_latent_pixels(ctx.env.settings, width, height * length)
        vision = joined_vision_output(clip_vision_start_image, clip_vision_end_image)
        frames = video_latent_frames(length)
        latent = torch.zeros([batch_size, CHANNELS, frames, height // FACTOR, width // FACTOR])
        clip = torch.full((length, height, width, 3), _GREY)
        mask = torch.ones((1, 1, frames * _FRAMES_PER_LATENT, height // FACTOR, width // FACTOR))
        if start_image is not None:
            start = _fitted(start_image[:length], "start_image", width, height)
            clip[: start.shape[0]] = start
            mask[:, :, : start.shape[0] + _FRAMES_PER_LATENT - 1] = 0.0
        if end_image is not None:
            end = _fitted(end_image[-length:], "end_image", width, height)
            clip[-end.shape[0] :] = end
            mask[:, :, -end.shape[0] :] = 0.0
        concat = vae_encode(vae, clip)
        # [1, 1, 4 * t, h, w] -> [1, 4, t, h, w]: the 4 pixel frames of a latent frame as channels.
        mask = mask.view(1, frames, _FRAMES_PER_LATENT, *mask.shape[-2:]).transpose(1, 2)
        values: dict[str, Any] = {"concat_latent_image": concat, "concat_mask": mask}
        if vision is not None:
            values["clip_vision_output"] = vision
        positive = set_conditioning_values(positive, values)
        negative = set_conditioning_values(negative, values)
        return positive, negative, {"samples": latent}
