"""Model sampling: how a network's output becomes a denoised latent, and on which sigmas.

ComfyUI's `ModelSamplingDiscrete` family: a discrete beta schedule (the sigma table and its
timestep mapping, `sigmas.DiscreteSchedule`), optionally rescaled to zero terminal SNR, and the
prediction type that `denoiser.UNetDenoiser` turns into D(x, sigma):

- `eps`: the network predicts the noise; `v`: v-prediction; `x0`: the denoised latent itself;
  `img_to_img`: x0 on an unscaled input;
- `lcm`: a latent-consistency model: eps, on the 50-entry distilled table, blended with its
  input by the consistency boundary conditions (sigma_data 0.5, timestep scaling 10).

Model families declare eps or v; the ModelSamplingDiscrete node picks any of them. The sampler
only sees this object (see `protocols.ModelSampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
