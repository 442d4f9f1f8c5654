"""The sigma schedules and sigma tools of ComfyUI's custom-sampling nodes (SIGMAS values: 1-D float32
CPU tensors, highest sigma first).

Schedules from explicit ranges (polyexponential, Laplace, VP), from a model's discrete table
(SD-Turbo, the Beta scheduler with free parameters, BasicScheduler's denoise tail), NVIDIA's
Align Your Steps tables, and the SplitSigmas / SplitSigmasDenoise / FlipSigmas / SetFirstSigma
operations, each computed as ComfyUI 0.3.64 computes it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from comfyd.sampling.sigmas import DiscreteSchedule, _append_zero, beta_scheduler, calculate_sigmas


def basic_scheduler_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int, denoise: float) -> Tensor:
    """BasicScheduler: `steps` sigmas of a named scheduler, or the tail of a longer schedule when
    denoise < 1 (no penultimate-sigma drop: the sampler is not known here)."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros([0], dtype=torch.float32)
        total = int(steps / denoise)
    return calculate_sigmas(schedule, scheduler, total)[-(steps + 1) :]


def polyexponential_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 1.0) -> Tensor:
    """A polynomial of degree rho in log sigma."""
    ramp = torch.linspace(1, 0, n) ** rho
    sigmas = torch.exp(ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min))
    return _append_zero(sigmas)


def vp_sigmas(n: int, beta_d: float = 19.9, beta_min: float = 0.1, eps_s: float = 1e-3) -> Tensor:
    """The continuous VP-SDE schedule."""
    t = torch.linspace(1, eps_s, n)
    return _append_zero(torch.sqrt(torch.special.expm1(beta_d * t**2 / 2 + beta_min * t)))


def laplace_sigmas(n: int, sigma_min: float, sigma_max: float, mu: float = 0.0, beta: float = 0.5) -> Tensor:
    """Tiankai et al. (2024): log sigma Laplace-distributed around mu (no trailing zero, like ComfyUI)."""
    epsilon = 1e-5
    x = torch.linspace(0, 1, n)
    lmb = mu - beta * torch.sign(0.5 - x) * torch.log(1 - 2 * torch.abs(0.5 - x) + epsilon)
    return torch.clamp(torch.exp(lmb), min=sigma_min, max=sigma_max)


def sd_turbo_sigmas(schedule: DiscreteSchedule, steps: int, denoise: float) -> Tensor:
    """SD-Turbo's timesteps 999, 899, ..., 99, starting later for denoise < 1."""
    start = 10 - int(10 * denoise)
    timesteps = torch.flip(torch.arange(1, 11) * 100 - 1, (0,))[start : start + steps]
    return _append_zero(schedule.sigma(timesteps))


def beta_sampling_sigmas(schedule: DiscreteSchedule, steps: int, alpha: float, beta: float) -> Tensor:
    return beta_scheduler(schedule, steps, alpha=alpha, beta=beta)


# NVIDIA's Align Your Steps noise levels (10 steps), per model type.
AYS_NOISE_LEVELS: dict[str, list[float]] = {
    "SD1": [14.6146412293, 6.4745760956, 3.8636745985, 2.6946151520, 1.8841921177, 1.3943805092,
            0.9642583904, 0.6523686016, 0.3977456272, 0.1515232662, 0.0291671582],
    "SDXL": [14.6146412293, 6.3184485287, 3.7681790315, 2.1811480769, 1.3405244945, 0.8620721141,
             0.5550693289, 0.3798540708, 0.2332364134, 0.1114188177, 0.0291671582],
    "SVD": [700.00, 54.5, 15.886, 7.977, 4.248, 1.789, 0.981, 0.403, 0.173, 0.034, 0.002],
}  # fmt: skip


def _loglinear_interp(levels: list[float], num_steps: int) -> np.ndarray:
    """Resample a decreasing list to num_steps points, linearly in log space."""
    xs = np.linspace(0, 1, len(levels))
    ys = np.log(levels[::-1])
    new_ys = np.interp(np.linspace(0, 1, num_steps), xs, ys)
    return np.exp(new_ys)[::-1].copy()


def align_your_steps_sigmas(model_type: str, steps: int, denoise: float) -> Tensor:
    if model_type not in AYS_NOISE_LEVELS:
        raise ValueError(f"model_type must be one of {list(AYS_NOISE_LEVELS)}, got {model_type!r}")
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros([0], dtype=torch.float32)
        total = round(steps * denoise)
    levels: list[float] | np.ndarray = AYS_NOISE_LEVELS[model_type][:]
    if steps + 1 != len(levels):
        levels = _loglinear_interp(list(levels), steps + 1)
    levels = levels[-(total + 1) :]
    levels[-1] = 0
    return torch.tensor(np.asarray(levels, dtype=np.float64), dtype=torch.float32)


# --- sigma tools ------------------------------------------------------------------------------


def split_sigmas(sigmas: Tensor, step: int) -> tuple[Tensor, Tensor]:
    """(sigmas[: step + 1], sigmas[step:]): the two halves share the sigma at `step`."""
    return sigmas[: step + 1], sigmas[step:]


def split_sigmas_denoise(sigmas: Tensor, denoise: float) -> tuple[Tensor, Tensor]:
    """The last round(steps * denoise) steps become the low half (ComfyUI's slicing, kept as is:
    at denoise 0 the high half is empty)."""
    steps = max(sigmas.shape[-1] - 1, 0)
    total = round(steps * denoise)
    return sigmas[:-total], sigmas[-(total + 1) :]


def flip_sigmas(sigmas: Tensor) -> Tensor:
    """Reversed, lowest first; a leading 0 becomes 0.0001 (for inversion towards noise)."""
    if len(sigmas) == 0:
        return sigmas
    flipped = sigmas.flip(0)
    if flipped[0] == 0:
        flipped[0] = 0.0001
    return flipped


def set_first_sigma(sigmas: Tensor, sigma: float) -> Tensor:
    out = sigmas.clone()
    out[0] = sigma
    return out
