"""Self-attention guidance (SAG), the sampling half: a post-CFG patch that blurs the negative
prediction where the UNet's middle self-attention looked most, runs the negative prompt again on
that degraded latent, and pushes the result away from it:

    degraded = blur(uncond_denoised) where attention mass > 1, else uncond_denoised
    denoised += (degraded - D_uncond(degraded + x - uncond_denoised)) * scale

The attention comes from the model half (comfyd.models.attention_capture), which records the
negative prompt's self-attention probabilities of the middle block's first transformer during
each UNet call into an `AttentionRecord` the two halves share. The record is per thread: jobs
sharing one patched model each see their own.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfyd.sampling.cfg import NEGATIVE, PromptBatcher
from comfyd.sampling.guidance import CfgArgs, GuidanceEnv, PostFn

_THRESHOLD = 1.0
_KERNEL = 9


class AttentionRecord:
    """The batch layout of the UNet call in progress and the last negative-prompt attention."""

    def __init__(self) -> None:
        self._local = threading.local()

    def attach(self, denoiser: Any) -> None:
        """Read batch layouts from this sampling run's UNetDenoiser (`batch_kinds`)."""
        self._local.denoiser = denoiser
        self._local.scores = None

    def negative_chunk(self) -> tuple[int, int] | None:
        """(index, chunks) of the negative prompt in the current UNet batch, or None."""
        denoiser = getattr(self._local, "denoiser", None)
        kinds = getattr(denoiser, "batch_kinds", None) if denoiser is not None else None
        if not kinds or NEGATIVE not in kinds:
            return None
        return kinds.index(NEGATIVE), len(kinds)

    def store(self, scores: Tensor) -> None:
        self._local.scores = scores

    def scores(self) -> Tensor | None:
        return getattr(self._local, "scores", None)


def gaussian_blur_2d(image: Tensor, kernel_size: int, sigma: float) -> Tensor:
    """A separable Gaussian kernel applied per channel, with reflected borders."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size)
    pdf = torch.exp(-0.5 * (x / sigma).pow(2))
    kernel = (pdf / pdf.sum()).to(device=image.device, dtype=image.dtype)
    kernel2d = torch.mm(kernel[:, None], kernel[None, :])
    kernel2d = kernel2d.expand(image.shape[-3], 1, kernel2d.shape[0], kernel2d.shape[1])
    pad = kernel_size // 2
    image = F.pad(image, [pad, pad, pad, pad], mode="reflect")
    return F.conv2d(image, kernel2d, groups=image.shape[-3])


def create_blur_map(x0: Tensor, attention: Tensor, sigma: float, threshold: float) -> Tensor:
    """x0 blurred where the heads' mean attention, summed over queries, exceeds `threshold`."""
    _, queries, keys = attention.shape
    batch, _, height, width = x0.shape
    attention = attention.reshape(batch, -1, queries, keys)
    mask = attention.mean(1, keepdim=False).sum(1, keepdim=False) > threshold
    total = mask.shape[-1]
    # The attention grid's rows: the divisor of `total` nearest the latent's aspect ratio.
    guess = round(math.sqrt((height / width) * total))
    rows = None
    for i in range(0, math.floor(math.sqrt(total) / 2)):
        for j in ((guess + i), max(1, guess - i)):
            if total % j == 0:
                rows = j
                break
        if rows is not None:
            break
    if rows is None:
        raise ValueError(f"self-attention guidance: no grid fits {total} attention positions")
    mask = mask.reshape(batch, rows, total // rows).unsqueeze(1).type(attention.dtype)
    mask = F.interpolate(mask, (height, width))
    blurred = gaussian_blur_2d(x0, kernel_size=_KERNEL, sigma=sigma)
    return blurred * mask + x0 * (1 - mask)


@dataclass(frozen=True, eq=False)
class SelfAttentionGuidancePatch:
    """SelfAttentionGuidance's post-CFG function (see the module docstring)."""

    scale: float
    blur_sigma: float
    record: AttentionRecord

    def bind(self, env: GuidanceEnv) -> PostFn:
        self.record.attach(env.unet)
        # The negative prompt alone, at its own index so the capture records this call as well.
        negatives = [replace(e) for e in env.entries if e.kind == NEGATIVE]
        batcher = PromptBatcher(env.unet, negatives, [False, True])

        def post(denoised: Tensor, args: CfgArgs) -> Tensor:
            if min(denoised.shape[2:]) <= 4:  # too small to pad for the blur
                return denoised
            attention = self.record.scores()
            if attention is None:
                raise ValueError("self-attention guidance found no middle-block self-attention to read")
            uncond = args.uncond_denoised
            degraded = create_blur_map(uncond, attention, self.blur_sigma, _THRESHOLD)
            degraded_noised = degraded + args.x - uncond
            _, sag = batcher.predictions(degraded_noised, float(args.sigma))
            assert sag is not None
            return denoised + (degraded - sag) * self.scale

        return post
