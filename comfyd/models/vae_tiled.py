"""Tiled VAE decoding and encoding, as ComfyUI's VAEDecodeTiled / VAEEncodeTiled compute them.

The latent (or picture) is cut into overlapping tiles; each tile goes through the VAE alone and
is blended into the result with a linear ramp over the overlap. ComfyUI runs three tilings
(tile w x h, w/2 x 2h and 2w x h/2) and averages them, so no seam sits in the same place in all
three; decoding averages the raw decoder outputs before mapping -1..1 to 0..1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch

from comfyd.models.handles import VaeHandle
from comfyd.models.vae_codec import _as_device, crop_to_multiple

TileFn = Callable[[torch.Tensor], torch.Tensor]


def tiled_apply(
    samples: torch.Tensor,
    function: TileFn,
    tile: tuple[int, int],
    overlap: int,
    scale: float,
    out_channels: int,
) -> torch.Tensor:
    """Apply `function` (which scales H and W by `scale`) to NCHW `samples` tile by tile.

    `tile` is (height, width) in input cells; the result is float32 on the CPU.
    """
    height, width = samples.shape[2], samples.shape[3]
    tile_h, tile_w = tile
    for size, name in ((tile_h, "height"), (tile_w, "width")):
        if size <= overlap:
            raise ValueError(f"tile {name} {size} must be larger than the overlap {overlap}")
    out_h, out_w = round(scale * height), round(scale * width)
    output = torch.empty((samples.shape[0], out_channels, out_h, out_w))
    for b in range(samples.shape[0]):
        single = samples[b : b + 1]
        if height <= tile_h and width <= tile_w:
            output[b : b + 1] = function(single).to("cpu")
            continue
        total = torch.zeros((1, out_channels, out_h, out_w))
        weights = torch.zeros((1, out_channels, out_h, out_w))
        rows = range(0, height - overlap, tile_h - overlap) if height > tile_h else [0]
        cols = range(0, width - overlap, tile_w - overlap) if width > tile_w else [0]
        for row, col in itertools.product(rows, cols):
            top = max(0, min(height - overlap, row))
            left = max(0, min(width - overlap, col))
            part = single[:, :, top : top + min(tile_h, height - top), left : left + min(tile_w, width - left)]
            result = function(part).to("cpu")
            mask = torch.ones_like(result)
            feather = round(scale * overlap)
            for dim in (2, 3):
                if feather >= mask.shape[dim]:
                    continue
                for t in range(feather):
                    ramp = (t + 1) / feather
                    mask.narrow(dim, t, 1).mul_(ramp)
                    mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_(ramp)
            out_top, out_left = round(scale * top), round(scale * left)
            region = (slice(None), slice(None), slice(out_top, out_top + mask.shape[2]),
                      slice(out_left, out_left + mask.shape[3]))
            total[region] += result * mask
            weights[region] += mask
        output[b : b + 1] = total / weights
    return output


def _three_tilings(samples: torch.Tensor, function: TileFn, tile_w: int, tile_h: int, overlap: int,
                   scale: float, channels: int, order: tuple[tuple[int, int], ...]) -> torch.Tensor:
    parts = [tiled_apply(samples, function, (h, w), overlap, scale, channels) for w, h in order]
    return parts[0] + parts[1] + parts[2]


def vae_decode_tiled(vae: VaeHandle, samples: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """Unscaled latents [B, C, h, w] -> IMAGE [B, H, W, 3] in 0..1; `tile`/`overlap` in latent cells."""
    if samples.ndim != 4 or samples.shape[1] != vae.latent_channels:
        raise ValueError(f"VAE decode expects latents shaped [B, {vae.latent_channels}, H, W], got "
                         f"{tuple(samples.shape)}")
    device = _as_device(vae.device)
    with vae.computing() as module, torch.inference_mode():
        def decode(z: torch.Tensor) -> torch.Tensor:
            z = z.to(device=device, dtype=vae.dtype)
            if getattr(module, "post_quant_conv", None) is not None:
                z = module.post_quant_conv(z)
            return module.decoder(z).float()

        # ComfyUI's order of the three tilings (w, h): (w/2, 2h), (2w, h/2), (w, h).
        order = ((tile // 2, tile * 2), (tile * 2, tile // 2), (tile, tile))
        summed = _three_tilings(samples, decode, tile, tile, overlap, vae.downscale, 3, order)
    return torch.clamp((summed / 3.0 + 1.0) / 2.0, min=0.0, max=1.0).movedim(1, -1).contiguous()


def vae_encode_tiled(vae: VaeHandle, pixels: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """IMAGE [B, H, W, C] -> unscaled latents (posterior mean); `tile`/`overlap` in pixels."""
    if pixels.ndim != 4 or pixels.shape[-1] < 3:
        raise ValueError(f"VAE encode expects images shaped [B, H, W, 3], got {tuple(pixels.shape)}")
    device = _as_device(vae.device)
    nchw = crop_to_multiple(pixels[..., :3], vae.downscale).movedim(-1, 1)
    with vae.computing() as module, torch.inference_mode():
        def encode(x: torch.Tensor) -> torch.Tensor:
            x = (x.float() * 2.0 - 1.0).to(device=device, dtype=vae.dtype)
            moments = module.encoder(x)
            if getattr(module, "quant_conv", None) is not None:
                moments = module.quant_conv(moments)
            mean, _logvar = torch.chunk(moments, 2, dim=1)
            return mean.float()

        # ComfyUI's order of the three tilings (w, h): (w, h), (2w, h/2), (w/2, 2h).
        order = ((tile, tile), (tile * 2, tile // 2), (tile // 2, tile * 2))
        summed = _three_tilings(nchw, encode, tile, tile, overlap, 1 / vae.downscale, vae.latent_channels, order)
    return summed / 3.0
