"""Model sampling: how a network's output becomes a denoised latent, and on which sigmas.

ComfyUI's `ModelSamplingDiscrete` with EPS or V_PREDICTION (flow models: `flow.FlowModelSampling`): a discrete beta schedule (the sigma
table and its timestep mapping, `sigmas.DiscreteSchedule`) and the prediction type that
`denoiser.UNetDenoiser` turns into D(x, sigma). Model families declare which one they use; the
sampler only sees this object (see `protocols.ModelSampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from comfyd.sampling.sigmas import DiscreteSchedule, discrete_schedule

PREDICTIONS = ("eps", "v")


@dataclass(frozen=True)
class DiscreteModelSampling:
    """A discrete-time EPS or V model on the scaled-linear beta schedule."""

    prediction: str = "eps"  # "eps" | "v"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    timesteps: int = 1000

    def __post_init__(self) -> None:
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"model prediction must be one of {PREDICTIONS}, got {self.prediction!r}")

    @property
    def schedule(self) -> DiscreteSchedule:
        return discrete_schedule(self.beta_start, self.beta_end, self.timesteps)

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
