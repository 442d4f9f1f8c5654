"""Wan image-to-video: the extra input channels of an I2V transformer (36 = 16 + 4 + 16).

What ComfyUI's WAN21.concat_cond computes from a conditioning entry: the start-image latent
(`concat_latent_image`, normalised as a latent going into the sampler) and four copies of
1 - `concat_mask` (1 on the latent frames the start image fixes), mask first. They travel to the
network as the vector conditioning `concat` ([B, 20, t, h, w]); `WanNetwork` appends them to the
noisy latent. An entry without them gets zeros there (as ComfyUI gives it), built by the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

MASK_CHANNELS = 4


def _resize_frames(video: Tensor, dims: tuple[int, int]) -> Tensor:
    """[B, C, T, h, w] -> [B, C, T, H, W] frame by frame: centre crop to the aspect, bilinear."""
    if tuple(video.shape[-2:]) == dims:
        return video
    b, c, t, h, w = video.shape
    frames = video.movedim(2, 1).reshape(b * t, c, h, w)
    height, width = dims
    old, new = w / h, width / height
    x = round((w - w * (new / old)) / 2) if old > new else 0
    y = round((h - h * (old / new)) / 2) if old < new else 0
    frames = frames[:, :, y : h - y, x : w - x]
    frames = F.interpolate(frames, size=dims, mode="bilinear")
    return frames.reshape(b, t, c, height, width).movedim(1, 2)


def concat_builder(mean: Sequence[float], std: Sequence[float], image_channels: int) -> Any:
    """The vector-conditioning builder of an I2V transformer with `image_channels` image inputs."""

    def build(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
        image = item.get("concat_latent_image")
        mask = item.get("concat_mask")
        if image is None and mask is None:
            return {}
        if image is not None:
            if not isinstance(image, Tensor) or image.ndim != 5:
                raise ValueError("a Wan image-to-video model needs a video concat_latent_image [B, C, T, H, W]")
            image = _resize_frames(image.float(), dims)
            m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1, 1)
            s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1, 1)
            image = (image[:, : len(mean)] - m) / s
            image = image[:, :image_channels]
        if mask is None:
            frames = image.shape[2]  # type: ignore[union-attr]
            mask = torch.zeros((image.shape[0], MASK_CHANNELS, frames, *dims))  # type: ignore[union-attr]
        else:
            mask = mask.float()
            if mask.ndim != 5:
                raise ValueError("a Wan image-to-video concat_mask must be [B, 1, T, H, W]")
            if mask.shape[1] != MASK_CHANNELS:
                mask = mask.mean(dim=1, keepdim=True)
            mask = _resize_frames(1.0 - mask, dims)
            if mask.shape[1] == 1:
                mask = mask.repeat(1, MASK_CHANNELS, 1, 1, 1)
        if image is None:
            image = torch.zeros((mask.shape[0], image_channels, mask.shape[2], *dims))
        frames = max(image.shape[2], mask.shape[2])
        image = F.pad(image, (0, 0, 0, 0, 0, frames - image.shape[2]))
        mask = F.pad(mask, (0, 0, 0, 0, 0, frames - mask.shape[2]))
        batch = max(image.shape[0], mask.shape[0])
        return {"concat": torch.cat((mask.expand(batch, -1, -1, -1, -1), image.expand(batch, -1, -1, -1, -1)), 1)}

    return build
