"""Model sampling: how a network's output becomes a denoised latent, and on which sigmas.

ComfyUI's `ModelSamplingDiscrete` with EPS or V_PREDICTION: a discrete beta schedule (the sigma
table and its timestep mapping, `sigmas.DiscreteSchedule`) and the prediction type that
`denoiser.UNetDenoiser` turns into D(x, sigma). Model families declare which one they use; the
sampler only sees this object (see `protocols.ModelSampling`).
"""

from __future__ import annotations

from dataclasses import dataclass

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
