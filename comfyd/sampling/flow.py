"""Flow-matching model sampling (rectified flow: x_sigma = sigma * noise + (1 - sigma) * x0).

ComfyUI's CONST prediction on two sigma tables:
- `TimeShiftSchedule` (ModelSamplingDiscreteFlow: SD3, AuraFlow, Flux schnell): N table entries
  sigma(t) = shift * t / (1 + (shift - 1) * t) at t = i / N * multiplier / multiplier, and the
  network timestep of a sigma is sigma * multiplier;
- `ExpTimeShiftSchedule` (ModelSamplingFlux: Flux dev): 10000 entries
  sigma(t) = e^mu / (e^mu + (1 / t - 1)), and the network timestep of a sigma is sigma itself.

Both expose what the schedulers and samplers read of `sigmas.DiscreteSchedule` (the table,
sigma_min / sigma_max, timestep <-> sigma, percent_to_sigma), so every scheduler runs on them.
`FlowModelSampling` adds the CONST parameterisation: the network input is x itself, the
denoised estimate x - v * sigma, the start point sigma * noise + (1 - sigma) * latent and the
result is divided by (1 - last sigma). Numbers are float32 as ComfyUI's buffers are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

CONST = "const"


def time_snr_shift(shift: float, t: Tensor | float) -> Tensor | float:
    """SD3's shifted timestep: shift * t / (1 + (shift - 1) * t); t unchanged at shift 1."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


def exp_time_shift(mu: float, t: Tensor | float) -> Tensor | float:
    """Flux's time shift: e^mu / (e^mu + (1 / t - 1))."""
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1) ** 1.0)


class _FlowTable:
    """The shared part of both flow tables: the float32 sigma table and lookups on it."""

    sigmas: Tensor

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    @property
    def log_sigmas(self) -> Tensor:
        return self.sigmas.log()

    def sigma(self, timestep: float | Tensor) -> Tensor:
        raise NotImplementedError

    def timestep(self, sigma: float | Tensor) -> float:
        raise NotImplementedError

    def timesteps(self, sigmas: Tensor) -> Tensor:
        return torch.tensor([self.timestep(s) for s in sigmas.to(torch.float32)], dtype=torch.float32)

    def _shifted(self, t: float) -> float:
        raise NotImplementedError

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 1.0
        if percent >= 1.0:
            return 0.0
        return float(self._shifted(1.0 - percent))


@dataclass(frozen=True, eq=False)
class TimeShiftSchedule(_FlowTable):
    """ModelSamplingDiscreteFlow: `timesteps` entries of the SD3 time shift."""

    shift: float = 1.0
    multiplier: float = 1000.0
    steps: int = 1000

    def __post_init__(self) -> None:
        t = (torch.arange(1, self.steps + 1, 1) / self.steps) * self.multiplier
        object.__setattr__(self, "sigmas", self.sigma(t).to(torch.float32))

    def sigma(self, timestep: float | Tensor) -> Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32)
        return torch.as_tensor(time_snr_shift(self.shift, t / self.multiplier), dtype=torch.float32)

    def timestep(self, sigma: float | Tensor) -> float:
        return float(torch.as_tensor(sigma, dtype=torch.float32) * self.multiplier)

    def timesteps(self, sigmas: Tensor) -> Tensor:
        return sigmas.to(torch.float32) * self.multiplier

    def _shifted(self, t: float) -> float:
        return float(time_snr_shift(self.shift, t))


@dataclass(frozen=True, eq=False)
class ExpTimeShiftSchedule(_FlowTable):
    """ModelSamplingFlux: 10000 entries of the exponential time shift `mu` (ComfyUI's shift)."""

    shift: float = 1.15
    steps: int = 10000

    def __post_init__(self) -> None:
        t = torch.arange(1, self.steps + 1, 1) / self.steps
        object.__setattr__(self, "sigmas", self.sigma(t).to(torch.float32))

    def sigma(self, timestep: float | Tensor) -> Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32)
        return torch.as_tensor(exp_time_shift(self.shift, t), dtype=torch.float32)

    def timestep(self, sigma: float | Tensor) -> float:
        return float(torch.as_tensor(sigma, dtype=torch.float32))

    def timesteps(self, sigmas: Tensor) -> Tensor:
        return sigmas.to(torch.float32).clone()

    def _shifted(self, t: float) -> float:
        return float(exp_time_shift(self.shift, t))


FlowSchedule = TimeShiftSchedule | ExpTimeShiftSchedule


def flux_shift(max_shift: float, base_shift: float, width: int, height: int) -> float:
    """ModelSamplingFlux's shift: linear in the image's 2x2-patch count, base at 256, max at 4096."""
    low, high = 256, 4096
    slope = (max_shift - base_shift) / (high - low)
    intercept = base_shift - slope * low
    return (width * height / (8 * 8 * 2 * 2)) * slope + intercept


@dataclass(frozen=True, eq=False)
class FlowModelSampling:
    """CONST prediction on a flow table (see the module docstring)."""

    schedule: FlowSchedule
    prediction: str = CONST

    @property
    def is_flow(self) -> bool:
        return True

    def noise_scaling(self, sigma: float | Tensor, noise: Tensor, latent: Tensor, max_denoise: bool) -> Tensor:
        return noise * float(sigma) + latent * complement(sigma)

    def inverse_noise_scaling(self, sigma: float | Tensor, x: Tensor) -> Tensor:
        return x if float(sigma) == 0.0 else x / complement(sigma)

    def scale_inpaint(self, sigma: float, noise: Tensor, latent: Tensor) -> Tensor:
        """The kept region of a masked latent at `sigma` (KSamplerX0Inpaint's scale_latent_inpaint)."""
        return noise * sigma + latent * complement(sigma)


@dataclass(frozen=True, eq=False)
class CleanInpaintSampling(FlowModelSampling):
    """A flow model whose masked sampling keeps the original latent as it is, not re-noised to the
    current sigma (ComfyUI's LTXV and WAN22 scale_latent_inpaint): image-to-video start frames
    stay clean."""

    def scale_inpaint(self, sigma: float, noise: Tensor, latent: Tensor) -> Tensor:
        return latent


def clean_inpaint(sampling: Any) -> Any:
    """`sampling` as clean-inpainting flow sampling (what a ModelSampling* node sets on such a
    family's MODEL); other samplings are returned as given."""
    if type(sampling) is FlowModelSampling:
        return CleanInpaintSampling(sampling.schedule, sampling.prediction)
    return sampling


def complement(sigma: float | Tensor) -> float:
    """1 - sigma computed in float32, as ComfyUI computes it on its float32 sigma tensors."""
    return float(1.0 - torch.as_tensor(sigma, dtype=torch.float32))
