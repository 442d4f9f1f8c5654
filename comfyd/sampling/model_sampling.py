"""Model sampling: how a network's output becomes a denoised latent, and on which sigmas.

ComfyUI's `ModelSamplingDiscrete` family: a discrete beta schedule (the sigma table and its
timestep mapping, `sigmas.DiscreteSchedule`), optionally rescaled to zero terminal SNR, and the
prediction type that `denoiser.UNetDenoiser` turns into D(x, sigma):

- `eps`: the network predicts the noise; `v`: v-prediction; `x0`: the denoised latent itself;
  `img_to_img`: x0 on an unscaled input;
- `lcm`: a latent-consistency model: eps, on the 50-entry distilled table, blended with its
  input by the consistency boundary conditions (sigma_data 0.5, timestep scaling 10).

Model families declare eps or v (flow models: `flow.FlowModelSampling`); the ModelSamplingDiscrete node picks any of them. The sampler
only sees this object (see `protocols.ModelSampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from comfyd.sampling.sigmas import DiscreteSchedule, discrete_schedule, distilled_schedule

PREDICTIONS = ("eps", "v", "x0", "img_to_img", "lcm")


@dataclass(frozen=True)
class DiscreteModelSampling:
    """A discrete-time model on the scaled-linear beta schedule."""

    prediction: str = "eps"  # one of PREDICTIONS
    beta_start: float = 0.00085
    beta_end: float = 0.012
    timesteps: int = 1000
    zsnr: bool = False  # the table rescaled to zero terminal SNR

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"model prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

    @property
    def schedule(self) -> DiscreteSchedule:
        full = discrete_schedule(self.beta_start, self.beta_end, self.timesteps, self.zsnr)
        if self.prediction == "lcm":
            return distilled_schedule(full)
        return full

    @property
    def is_flow(self) -> bool:
        return False

    def noise_scaling(self, sigma: float | Tensor, noise: Tensor, latent: Tensor, max_denoise: bool) -> Tensor:
        """The sampler's start point: latent + noise * sigma (sqrt(1 + sigma^2) from the top)."""
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32)
        scale = torch.sqrt(1.0 + sigma_t**2.0) if max_denoise else sigma_t
        return noise * float(scale) + latent

    def inverse_noise_scaling(self, sigma: float | Tensor, x: Tensor) -> Tensor:
        return x

    def scale_inpaint(self, sigma: float, noise: Tensor, latent: Tensor) -> Tensor:
        """The kept region of a masked latent at `sigma` (KSamplerX0Inpaint's scale_latent_inpaint)."""
        return noise * sigma + latent
