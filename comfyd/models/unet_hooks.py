"""UNet-side model patches: hooks on a diffusers UNet that change what it computes inside.

ComfyUI lets a patch see each output block's input before the skip connection is concatenated
(`output_block_patch(h, hsp)`). In a diffusers UNet that concatenation happens inside the up
blocks, right before each resnet: the resnet's input is `cat([h, skip])`. A forward pre-hook on
that resnet splits the input at h's width (known from the block layout), lets the patch change
both halves, and concatenates them again: the same values ComfyUI's UNet goes on with.

Hooks are installed by the model's patcher for the length of a `patched()` block only (with the
weight patches, so jobs wanting different patches on one shared UNet take turns) and removed
after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn


def output_block_resnets(unet: nn.Module) -> Iterator[tuple[nn.Module, int]]:
    """Every up-block resnet of a diffusers UNet in ComfyUI's output-block order, with the width
    of the hidden state `h` its concatenated input starts with (the rest is the skip)."""
    widths = list(reversed(list(unet.config.block_out_channels)))
    output_channel = widths[0]
    for index, block in enumerate(unet.up_blocks):
        previous, output_channel = output_channel, widths[index]
        for position, resnet in enumerate(block.resnets):
            yield resnet, previous if position == 0 else output_channel


def fourier_filter(x: Tensor, threshold: int, scale: float) -> Tensor:
    """Scale the lowest spatial frequencies of x (a centred 2*threshold square of its shifted
    2-D spectrum) by `scale`; computed in float32, returned in x's dtype."""
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.float(), dim=(-2, -1)), dim=(-2, -1))
    batch, channels, height, width = spectrum.shape
    mask = torch.ones((batch, channels, height, width), device=x.device)
    row, col = height // 2, width // 2
    mask[..., row - threshold : row + threshold, col - threshold : col + threshold] = scale
    spectrum = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(spectrum, dim=(-2, -1)).real.to(x.dtype)


@dataclass(frozen=True)
class FreeUPatch:
    """FreeU (version 1) and FreeU_V2: on the output blocks whose h is 4x or 2x the UNet's base
    width, half of h's channels are amplified (b1 / b2; version 2 weights the amplification by
    h's normalised channel mean) and the skip's low frequencies are scaled (s1 / s2)."""

    version: int
    b1: float
    b2: float
    s1: float
    s2: float

    def install(self, unet: nn.Module) -> list[Any]:
        base = int(unet.config.block_out_channels[0])
        scales = {base * 4: (self.b1, self.s1), base * 2: (self.b2, self.s2)}
        handles = []
        for resnet, width in output_block_resnets(unet):
            scale = scales.get(width)
            if scale is not None:
                handles.append(resnet.register_forward_pre_hook(partial(self._hook, width, scale)))
        return handles

    def _hook(self, width: int, scale: tuple[float, float], _module: nn.Module, args: tuple) -> tuple:
        joined = args[0]
        h, skip = joined[:, :width].clone(), joined[:, width:]
        half = h.shape[1] // 2
        if self.version == 1:
            h[:, :half] = h[:, :half] * scale[0]
        else:
            mean = h.mean(1).unsqueeze(1)
            batch = mean.shape[0]
            high, _ = torch.max(mean.view(batch, -1), dim=-1, keepdim=True)
            low, _ = torch.min(mean.view(batch, -1), dim=-1, keepdim=True)
            mean = (mean - low.unsqueeze(2).unsqueeze(3)) / (high - low).unsqueeze(2).unsqueeze(3)
            h[:, :half] = h[:, :half] * ((scale[0] - 1) * mean + 1)
        skip = fourier_filter(skip, threshold=1, scale=scale[1])
        return (torch.cat([h, skip], dim=1), *args[1:])
