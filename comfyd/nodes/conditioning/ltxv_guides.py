"""LTXVAddGuide and LTXVCropGuides: LTX-Video keyframe guides (comfy_extras/nodes_lt.py).

LTXVAddGuide encodes an image (or 1 + 8k frames) at the latent's size (bilinear, no crop) and
places it at `frame_idx`: its first latent frames (at most two) are appended after the video's
latent frames as keyframes, their tokens positioned at that frame (`keyframe_idxs` in both
conditionings: pixel coordinates, the first frame causally fixed when placed at 0), with a noise
mask of 1 - strength and the video's own frames there set to 1; later latent frames of a longer
guide replace the video's frames in place (mask 1 - strength). LTXVCropGuides removes the
appended keyframes from the latent, its mask and both conditionings after sampling.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.families._ltxv_transformer import SCALE_FACTORS, pixel_coords
from comfyd.models.handles import VaeHandle
from comfyd.models.text_encoding import Conditioning
from comfyd.models.vae_codec import vae_encode
from comfyd.nodes.conditioning.clip_text import _check_conditioning, set_conditioning_values
from comfyd.nodes.image.transform import common_upscale

PREFIX_FRAMES = 2  # latent frames of a guide appended as keyframes; the rest replace frames
_OUTPUTS = (OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative"), OutputSpec("LATENT", "latent"))


def keyframes(conditioning: Conditioning) -> tuple[torch.Tensor | None, int]:
    """(keyframe_idxs of the first entry that has them, how many distinct keyframe frames)."""
    found = next((o["keyframe_idxs"] for _, o in conditioning if o.get("keyframe_idxs") is not None), None)
    return found, (0 if found is None else int(torch.unique(found[:, 0]).shape[0]))


def _video_latent(latent: Any) -> tuple[torch.Tensor, torch.Tensor]:
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 5:
        raise ValueError("latent must be a video LATENT [B, C, T, H, W]")
    mask = latent.get("noise_mask")
    if mask is None:
        mask = torch.ones((samples.shape[0], 1, samples.shape[2], 1, 1), dtype=torch.float32)
    return samples, mask.clone()


def latent_index(conditioning: Conditioning, length: int, guide_frames: int, frame_idx: int) -> tuple[int, int]:
    """(pixel frame index, latent frame index) where a guide of `guide_frames` goes."""
    step = SCALE_FACTORS[0]
    count = length - keyframes(conditioning)[1]
    if frame_idx < 0:
        frame_idx = max((count - 1) * step + 1 + frame_idx, 0)
    if guide_frames > 1 and frame_idx != 0:
        frame_idx = (frame_idx - 1) // step * step + 1  # after the first frame, whole groups of 8
    return frame_idx, (frame_idx + step - 1) // step


def _with_keyframe(conditioning: Conditioning, frame_idx: int, guide: torch.Tensor) -> Conditioning:
    existing, _ = keyframes(conditioning)
    batch, _, frames, height, width = guide.shape
    coords = pixel_coords(batch, frames, height, width, causal_fix=frame_idx == 0).long()
    coords[:, 0] += frame_idx
    idxs = coords if existing is None else torch.cat([existing, coords], dim=2)
    return set_conditioning_values(conditioning, {"keyframe_idxs": idxs})


@register_node
class LTXVAddGuide(Node):
    schema = NodeSchema(
        class_type="LTXVAddGuide",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("vae", "VAE"),
            Link("latent", "LATENT"),
            Link("image", "IMAGE", tooltip=(
                "Image or video to condition the latent video on. Must be 8*n + 1 frames. If the video is not "
                "8*n + 1 frames, it will be cropped to the nearest 8*n + 1 frames.")),
            Int("frame_idx", default=0, min=-9999, max=9999, step=None, tooltip=(
                "Frame index to start the conditioning at. For single-frame images or videos with 1-8 frames, any "
                "frame_idx value is acceptable. For videos with 9+ frames, frame_idx must be divisible by 8, "
                "otherwise it will be rounded down to the nearest multiple of 8. Negative values are counted from "
                "the end of the video.")),
            Float("strength", default=1.0, min=0.0, max=1.0, step=0.01),
        ),  # fmt: skip
        outputs=_OUTPUTS,
        category="conditioning/video_models",
    )

    def run(
        self, ctx: NodeContext, positive: Conditioning, negative: Conditioning, vae: VaeHandle, latent: Any,
        image: torch.Tensor, frame_idx: int, strength: float,
    ) -> tuple[Conditioning, Conditioning, dict[str, Any]]:  # fmt: skip
        positive = _check_conditioning(positive, "positive")
        negative = _check_conditioning(negative, "negative")
        samples, mask = _video_latent(latent)
        if not isinstance(image, torch.Tensor) or image.ndim != 4:
            raise ValueError("image must be an IMAGE [frames, height, width, channels]")
        step, down = SCALE_FACTORS[0], SCALE_FACTORS[1]
        images = image[: (image.shape[0] - 1) // step * step + 1]
        height, width = samples.shape[3] * down, samples.shape[4] * down
        pixels = common_upscale(images.movedim(-1, 1), width, height, "bilinear", "disabled").movedim(1, -1)
        guide = vae_encode(vae, pixels[..., :3])
        frame_idx, index = latent_index(positive, samples.shape[2], images.shape[0], frame_idx)
        if index + guide.shape[2] > samples.shape[2]:
            raise ValueError("Conditioning frames exceed the length of the latent sequence.")
        prefix = min(PREFIX_FRAMES, guide.shape[2])
        head = guide[:, :, :prefix]
        _, at = latent_index(positive, samples.shape[2], head.shape[2], frame_idx)
        mask[:, :, at : at + head.shape[2]] = 1.0
        positive = _with_keyframe(positive, frame_idx, head)
        negative = _with_keyframe(negative, frame_idx, head)
        kept = torch.full((mask.shape[0], 1, head.shape[2], mask.shape[3], mask.shape[4]), 1.0 - strength)
        samples = torch.cat([samples, head], dim=2)
        mask = torch.cat([mask, kept], dim=2)
        rest = guide[:, :, prefix:]
        if rest.shape[2]:
            start = index + prefix
            if samples.shape[2] < start + rest.shape[2]:
                raise ValueError("Conditioning frames exceed the length of the latent sequence.")
            samples = samples.clone()
            samples[:, :, start : start + rest.shape[2]] = rest
            mask[:, :, start : start + rest.shape[2]] = 1.0 - strength
        return positive, negative, {"samples": samples, "noise_mask": mask}


@register_node
class LTXVCropGuides(Node):
    schema = NodeSchema(
        class_type="LTXVCropGuides",
        inputs=(Link("positive", "CONDITIONING"), Link("negative", "CONDITIONING"), Link("latent", "LATENT")),
        outputs=_OUTPUTS,
        category="conditioning/video_models",
    )

    def run(
        self, ctx: NodeContext, positive: Conditioning, negative: Conditioning, latent: Any
    ) -> tuple[Conditioning, Conditioning, dict[str, Any]]:
        positive = _check_conditioning(positive, "positive")
        negative = _check_conditioning(negative, "negative")
        samples, mask = _video_latent(latent)
        samples = samples.clone()
        _, count = keyframes(positive)
        if count == 0:
            return positive, negative, {"samples": samples, "noise_mask": mask}
        cleared = {"keyframe_idxs": None}
        return (
            set_conditioning_values(positive, cleared),
            set_conditioning_values(negative, cleared),
            {"samples": samples[:, :, :-count], "noise_mask": mask[:, :, :-count]},
        )
