"""Resizing latents as ComfyUI's LatentUpscale / LatentUpscaleBy do (`comfy.utils.common_upscale`).

Methods: torch's nearest-exact / bilinear / area / bicubic interpolation, and "bislerp": bilinear
sampling positions, but neighbouring latent vectors (over channels) are blended by spherical
interpolation of their directions and linear interpolation of their lengths, first along the
width, then along the height. Optional centre crop to the target aspect ratio first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

UPSCALE_METHODS = ["nearest-exact", "bilinear", "area", "bicubic", "bislerp"]
CROP_METHODS = ["disabled", "center"]


def center_crop(samples: Tensor, width: int, height: int) -> Tensor:
    """Trim the longer side symmetrically so the aspect ratio matches width:height."""
    old_height, old_width = samples.shape[-2], samples.shape[-1]
    old_aspect = old_width / old_height
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_width - old_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_height - old_height * (old_aspect / new_aspect)) / 2)
    return samples[..., y : old_height - y, x : old_width - x]


def resize_latent(samples: Tensor, width: int, height: int, method: str, crop: str = "disabled") -> Tensor:
    """[B, C, H, W] -> [B, C, height, width] (sizes in latent cells)."""
    if method not in UPSCALE_METHODS:
        raise ValueError(f"unknown upscale method {method!r}; expected one of {UPSCALE_METHODS}")
    if crop not in CROP_METHODS:
        raise ValueError(f"unknown crop {crop!r}; expected one of {CROP_METHODS}")
    if width < 1 or height < 1:
        raise ValueError(f"latent size must be at least 1x1 cells, got {width}x{height}")
    if samples.ndim != 4:
        raise ValueError(f"latent samples must be [B, C, H, W], got shape {list(samples.shape)}")
    if crop == "center":
        samples = center_crop(samples, width, height)
    if method == "bislerp":
        return bislerp(samples, width, height)
    return F.interpolate(samples, size=(height, width), mode=method)


def _slerp(a: Tensor, b: Tensor, ratio: Tensor) -> Tensor:
    """Blend rows of a and b ([N, C]) by ratio ([N, 1]): slerp of directions, lerp of norms."""
    channels = a.shape[-1]
    norm_a = torch.norm(a, dim=-1, keepdim=True)
    norm_b = torch.norm(b, dim=-1, keepdim=True)
    unit_a = a / norm_a
    unit_b = b / norm_b
    unit_a[norm_a.expand(-1, channels) == 0.0] = 0.0
    unit_b[norm_b.expand(-1, channels) == 0.0] = 0.0
    dot = (unit_a * unit_b).sum(1)
    omega = torch.acos(dot)
    sin_omega = torch.sin(omega)
    r = ratio.squeeze(1)
    out = (torch.sin((1.0 - r) * omega) / sin_omega).unsqueeze(1) * unit_a
    out = out + (torch.sin(r * omega) / sin_omega).unsqueeze(1) * unit_b
    out *= (norm_a * (1.0 - ratio) + norm_b * ratio).expand(-1, channels)
    # Parallel vectors: keep a; opposite vectors: plain linear blend.
    parallel = dot > 1 - 1e-5
    out[parallel] = a[parallel]
    opposite = dot < 1e-5 - 1
    out[opposite] = (a * (1.0 - ratio) + b * ratio)[opposite]
    return out


def _sample_positions(
    length_old: int, length_new: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """(fractional part, left index, right index) of each new position, via bilinear interpolation
    of the index ramps (so the edges behave as torch's bilinear resize)."""
    ramp = torch.arange(length_old, dtype=torch.float32, device=device).reshape(1, 1, 1, -1)
    left = F.interpolate(ramp, size=(1, length_new), mode="bilinear")
    ratios = left - left.floor()
    right_ramp = ramp + 1
    right_ramp[:, :, :, -1] -= 1
    right = F.interpolate(right_ramp, size=(1, length_new), mode="bilinear")
    return ratios, left.to(torch.int64), right.to(torch.int64)


def bislerp(samples: Tensor, width: int, height: int) -> Tensor:
    dtype = samples.dtype
    samples = samples.float()
    n, c, h, w = samples.shape

    # Along the width.
    ratios, left, right = _sample_positions(w, width, samples.device)
    left = left.expand(n, c, h, -1)
    right = right.expand(n, c, h, -1)
    ratios = ratios.expand(n, 1, h, -1)
    a = samples.gather(-1, left).movedim(1, -1).reshape(-1, c)
    b = samples.gather(-1, right).movedim(1, -1).reshape(-1, c)
    blended = _slerp(a, b, ratios.movedim(1, -1).reshape(-1, 1))
    result = blended.reshape(n, h, width, c).movedim(-1, 1)

    # Along the height.
    ratios, left, right = _sample_positions(h, height, samples.device)
    left = left.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    right = right.reshape(1, 1, -1, 1).expand(n, c, -1, width)
    ratios = ratios.reshape(1, 1, -1, 1).expand(n, 1, -1, width)
    a = result.gather(-2, left).movedim(1, -1).reshape(-1, c)
    b = result.gather(-2, right).movedim(1, -1).reshape(-1, c)
    blended = _slerp(a, b, ratios.movedim(1, -1).reshape(-1, 1))
    return blended.reshape(n, height, width, c).movedim(-1, 1).to(dtype)
