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


def _table_sigmas(levels: list[float], steps: int, denoise: float) -> Tensor:
    """A noise-level table resampled to steps + 1 points (log-linearly), the last `denoise` share
    kept, ending in 0: how the Align Your Steps and Optimal Steps schedulers use their tables."""
    total = steps
    if denoise < 1.0:
        if denoise <= 0.0:
            return torch.zeros([0], dtype=torch.float32)
        total = round(steps * denoise)
    table: list[float] | np.ndarray = levels[:]
    if steps + 1 != len(table):
        table = _loglinear_interp(list(table), steps + 1)
    table = table[-(total + 1) :]
    table[-1] = 0
    return torch.tensor(np.asarray(table, dtype=np.float64), dtype=torch.float32)


def align_your_steps_sigmas(model_type: str, steps: int, denoise: float) -> Tensor:
    if model_type not in AYS_NOISE_LEVELS:
        raise ValueError(f"model_type must be one of {list(AYS_NOISE_LEVELS)}, got {model_type!r}")
    return _table_sigmas(AYS_NOISE_LEVELS[model_type], steps, denoise)


# The Optimal Steps search's noise levels (arXiv 2503.13412), per flow model type.
OPTIMAL_STEPS_NOISE_LEVELS: dict[str, list[float]] = {
    "FLUX": [0.9968, 0.9886, 0.9819, 0.975, 0.966, 0.9471, 0.9158, 0.8287, 0.5512, 0.2808, 0.001],
    "Wan": [1.0, 0.997, 0.995, 0.993, 0.991, 0.989, 0.987, 0.985, 0.98, 0.975, 0.973, 0.968, 0.96, 0.946, 0.927,
            0.902, 0.864, 0.776, 0.539, 0.208, 0.001],
    "Chroma": [0.992, 0.99, 0.988, 0.985, 0.982, 0.978, 0.973, 0.968, 0.961, 0.953, 0.943, 0.931, 0.917, 0.9,
               0.881, 0.858, 0.832, 0.802, 0.769, 0.731, 0.69, 0.646, 0.599, 0.55, 0.501, 0.451, 0.402, 0.355,
               0.311, 0.27, 0.232, 0.199, 0.169, 0.143, 0.12, 0.101, 0.084, 0.07, 0.058, 0.048, 0.001],
}  # fmt: skip


def optimal_steps_sigmas(model_type: str, steps: int, denoise: float) -> Tensor:
    if model_type not in OPTIMAL_STEPS_NOISE_LEVELS:
        raise ValueError(f"model_type must be one of {list(OPTIMAL_STEPS_NOISE_LEVELS)}, got {model_type!r}")
    return _table_sigmas(OPTIMAL_STEPS_NOISE_LEVELS[model_type], steps, denoise)


_SPACINGS = {
    "linear": lambda x: x,
    "cosine": lambda x: torch.sin(x * math.pi / 2),
    "sine": lambda x: 1 - torch.cos(x * math.pi / 2),
}


def extend_intermediate_sigmas(
    sigmas: Tensor, steps: int, start_at_sigma: float, end_at_sigma: float, spacing: str
) -> Tensor:
    """`steps - 1` extra sigmas inside every interval whose upper sigma lies in
    [end_at_sigma, start_at_sigma] (a negative start: no upper bound), spaced by `spacing`."""
    if spacing not in _SPACINGS:
        raise ValueError(f"spacing must be one of {list(_SPACINGS)}, got {spacing!r}")
    upper = math.inf if start_at_sigma < 0 else start_at_sigma
    fractions = _SPACINGS[spacing](torch.linspace(0, 1, steps + 1)[1:-1])
    extended: list[float] = []
    for i in range(len(sigmas) - 1):
        current, following = sigmas[i], sigmas[i + 1]
        extended.append(float(current))
        if end_at_sigma <= current <= upper:
            extended.extend((fractions * (following - current) + current).tolist())
    if len(sigmas) > 0:
        extended.append(float(sigmas[-1]))
    return torch.tensor(extended, dtype=torch.float32)


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
