"""VAEDecodeTiled on a video latent [B, C, t, h, w].

ComfyUI cuts a video latent into tiles of `temporal_size / 4` latent frames (at least 2) and
`tile_size / 8` latent cells, decodes each and blends them; when one tile covers the whole latent
it decodes it in one go, which is exactly VAEDecode. comfyd decodes in one go always: identical to
ComfyUI whenever one tile covers the latent, and without ComfyUI's tile seams (and with more
memory) when it does not; that case is logged (README, known limits).
"""

from __future__ import annotations

import logging

import torch

from comfyd.models.handles import VaeHandle
from comfyd.models.vae_codec import vae_decode

logger = logging.getLogger(__name__)

TEMPORAL_COMPRESSION = 4


def one_tile_covers(samples: torch.Tensor, tile: int, temporal_size: int) -> bool:
    """Whether ComfyUI's tiling of this latent is a single tile (`tile` in latent cells)."""
    tile_t = max(2, temporal_size // TEMPORAL_COMPRESSION)
    frames, height, width = samples.shape[2:]
    return frames <= tile_t and height <= tile and width <= tile


def vae_decode_video_tiled(vae: VaeHandle, samples: torch.Tensor, tile: int, temporal_size: int) -> torch.Tensor:
    """IMAGE [B * T, H, W, 3] of a video latent (see the module docstring)."""
    if not one_tile_covers(samples, tile, temporal_size):
        logger.warning(
            "VAEDecodeTiled: this video latent (%s) spans several of ComfyUI's tiles; comfyd decodes it "
            "whole (no tile seams, more memory)", list(samples.shape)
        )
    return vae_decode(vae, samples)
