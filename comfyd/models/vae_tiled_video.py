"""VAEDecodeTiled on a video latent [B, C, t, h, w], as ComfyUI computes it.

ComfyUI's node turns its inputs into latent units (`temporal_size` / 4 frames, at least 2;
`temporal_overlap` / 4, at least 1 and at most half the tile; `tile_size` / 8 and `overlap` / 8
cells) and cuts the latent into tiles along time, height and width (comfy/utils.py
tiled_scale_multidim). Each tile is decoded alone; a tile of l latent frames gives 4l - 3 frames,
placed at frame 4 x (its first latent frame), and 8x the cells, placed at 8x its position. Every
tile is weighted by a linear ramp over its overlap on each side (4 x overlap - 3 frames, 8 x
overlap pixels), the weighted sum divided by the summed weights; a latent one tile covers is
decoded in one go (exactly VAEDecode). Then -1..1 becomes 0..1, clamped.
"""

from __future__ import annotations

import itertools

import torch

from comfyd.models.handles import VaeHandle
from comfyd.models.interrupts import check_interrupt
from comfyd.models.vae_codec import _as_device, _video_decoder_call, vae_decode

TIME = 4  # frames per latent frame (after the first)
SPACE = 8  # pixels per latent cell


def latent_tiling(
    tile_size: int, overlap: int, temporal_size: int, temporal_overlap: int
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """ComfyUI's VAEDecodeTiled inputs -> ((t, h, w) tile, (t, h, w) overlap) in latent units."""
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    if temporal_size < temporal_overlap * 2:
        temporal_overlap = temporal_overlap // 2
    tile_t = max(2, temporal_size // TIME)
    overlap_t = max(1, min(tile_t // 2, temporal_overlap // TIME))
    cells, cells_overlap = tile_size // SPACE, overlap // SPACE
    return (max(2, tile_t), cells, cells), (max(1, overlap_t), cells_overlap, cells_overlap)


def _out_len(dim: int, n: int) -> int:
    return max(0, n * TIME - 3) if dim == 0 else n * SPACE


def _out_pos(dim: int, pos: int) -> int:
    return pos * TIME if dim == 0 else pos * SPACE


def _ramp(shape: torch.Size, overlap: tuple[int, int, int]) -> torch.Tensor:
    mask = torch.ones(shape)
    for dim in range(3):
        feather = _out_len(dim, overlap[dim])
        size = mask.shape[dim + 2]
        if feather >= size:
            continue
        for t in range(feather):
            a = (t + 1) / feather
            mask.narrow(dim + 2, t, 1).mul_(a)
            mask.narrow(dim + 2, size - 1 - t, 1).mul_(a)
    return mask


def tiled_decode(
    samples: torch.Tensor, decode: object, tile: tuple[int, int, int], overlap: tuple[int, int, int]
) -> torch.Tensor:
    """Raw decoder output [B, 3, T, H, W] (float32, CPU) of `samples`, tile by tile."""
    out_shape = [_out_len(d, samples.shape[d + 2]) for d in range(3)]
    output = torch.empty([samples.shape[0], 3, *out_shape])
    for b in range(samples.shape[0]):
        s = samples[b : b + 1]
        if all(s.shape[d + 2] <= tile[d] for d in range(3)):
            output[b : b + 1] = decode(s)
            continue
        total = torch.zeros([1, 3, *out_shape])
        weights = torch.zeros([1, 3, *out_shape])
        starts = [
            range(0, s.shape[d + 2] - overlap[d], tile[d] - overlap[d]) if s.shape[d + 2] > tile[d] else [0]
            for d in range(3)
        ]
        for corner in itertools.product(*starts):
            check_interrupt()
            piece, placed = s, []
            for d in range(3):
                pos = max(0, min(s.shape[d + 2] - overlap[d], corner[d]))
                piece = piece.narrow(d + 2, pos, min(tile[d], s.shape[d + 2] - pos))
                placed.append(_out_pos(d, pos))
            decoded = decode(piece)
            mask = _ramp(decoded.shape, overlap)
            t_view, w_view = total, weights
            for d in range(3):
                t_view = t_view.narrow(d + 2, placed[d], mask.shape[d + 2])
                w_view = w_view.narrow(d + 2, placed[d], mask.shape[d + 2])
            t_view.add_(decoded * mask)
            w_view.add_(mask)
        output[b : b + 1] = total / weights
    return output


def vae_decode_video_tiled(
    vae: VaeHandle,
    samples: torch.Tensor,
    tile_size: int,
    overlap: int,
    temporal_size: int,
    temporal_overlap: int,
) -> torch.Tensor:
    """IMAGE [B * T, H, W, 3] of a video latent (see the module docstring); sizes in pixels/frames."""
    tile, overlaps = latent_tiling(tile_size, overlap, temporal_size, temporal_overlap)
    if all(samples.shape[d + 2] <= tile[d] for d in range(3)):
        return vae_decode(vae, samples)  # one tile: ComfyUI decodes it in one go too
    device = _as_device(vae.device)
    with vae.computing() as module, torch.inference_mode():

        def decode(z: torch.Tensor) -> torch.Tensor:
            return _video_decoder_call(module, z.to(device=device, dtype=vae.dtype)).to("cpu").float()

        raw = tiled_decode(samples, decode, tile, overlaps)
    pixels = torch.clamp((raw + 1.0) / 2.0, min=0.0, max=1.0)  # [B, 3, T, H, W]
    return pixels.movedim(1, -1).reshape(-1, *pixels.shape[-2:], 3).contiguous()
