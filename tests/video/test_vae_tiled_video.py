"""VAEDecodeTiled on video latents: ComfyUI's tiling in time, height and width (comfyd's
models/vae_tiled_video.py). bench/hunyuan_comfyui_parity.py holds it to ComfyUI's node on a real
(tiny) VAE; here the arithmetic is checked with a decoder whose tiles agree exactly."""

from __future__ import annotations

import torch

from comfyd.models.vae_tiled_video import latent_tiling, tiled_decode


def _nearest_decode(z: torch.Tensor) -> torch.Tensor:
    """A causal-VAE-shaped decoder: the first latent frame gives one frame, each later one four,
    every cell 8x8 pixels; channel 0..2 of the latent become the picture."""
    frames = torch.cat([z[:, :3, :1], z[:, :3, 1:].repeat_interleave(4, dim=2)], dim=2)
    return frames.repeat_interleave(8, dim=3).repeat_interleave(8, dim=4)


def test_comfyuis_node_inputs_become_latent_tiles() -> None:
    # ComfyUI's defaults (tile 256, overlap 64, temporal 64 / 8): 16 latent frames, 32 cells.
    assert latent_tiling(256, 64, 64, 8) == ((16, 32, 32), (2, 8, 8))
    # An overlap over a quarter of the tile is cut to a quarter; a temporal overlap over half the
    # temporal size is halved; at least 2 latent frames a tile and 1 of overlap.
    assert latent_tiling(64, 32, 8, 8) == ((2, 8, 8), (1, 2, 2))


def test_tiles_blend_back_into_the_whole_decode() -> None:
    z = torch.randn(2, 4, 5, 8, 12, generator=torch.Generator().manual_seed(0))
    whole = _nearest_decode(z)
    assert whole.shape == (2, 3, 17, 64, 96)
    tiled = tiled_decode(z, _nearest_decode, (3, 5, 8), (1, 2, 2))
    assert tiled.shape == whole.shape
    assert torch.allclose(tiled, whole, atol=1e-5)
    # One tile covering everything is the plain decode.
    assert torch.equal(tiled_decode(z, _nearest_decode, (5, 8, 12), (1, 2, 2)), whole)
