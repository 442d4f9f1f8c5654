"""FreSca (comfy_extras/nodes_fresca.py): a pre-CFG patch that rescales the guidance
(positive - negative) in the frequency domain, low frequencies by one factor and high ones by
another, and hands CFG positive = negative + the rescaled guidance. Nothing changes when the
negative prompt did not run (cfg 1)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from comfyd.sampling.guidance import GuidanceEnv, PredictionsFn


def frequency_scaled(x: Tensor, scale_low: float, scale_high: float, freq_cutoff: int) -> Tensor:
    """`x` (B, C, *spatial) with its centred spectrum scaled: a box of up to 2 * freq_cutoff
    indices per spatial axis around the centre by `scale_low`, the rest by `scale_high`. The FFT
    is over the last two axes only (as there), the box over every axis after the channels."""
    dtype = x.dtype
    spectrum = torch.fft.fftshift(torch.fft.fftn(x.to(torch.float32), dim=(-2, -1)), dim=(-2, -1))
    mask = torch.full(spectrum.shape, float(scale_high), device=x.device)
    centre = mask
    for dim in range(2, spectrum.ndim):
        middle = spectrum.shape[dim] // 2
        half = min(int(freq_cutoff), middle)
        centre = centre.narrow(dim, middle - half, 2 * half)
    centre.fill_(float(scale_low))
    scaled = torch.fft.ifftshift(spectrum * mask, dim=(-2, -1))
    return torch.fft.ifftn(scaled, dim=(-2, -1)).real.to(dtype)


@dataclass(frozen=True)
class FreScaPatch:
    scale_low: float
    scale_high: float
    freq_cutoff: int

    def bind(self, env: GuidanceEnv) -> PredictionsFn:
        def predictions(
            x: Tensor, sigma: float, cond: Tensor, uncond: Tensor | None
        ) -> tuple[Tensor, Tensor | None]:
            if uncond is None:
                return cond, uncond
            guidance = frequency_scaled(cond - uncond, self.scale_low, self.scale_high, self.freq_cutoff)
            return guidance + uncond, uncond

        return predictions
