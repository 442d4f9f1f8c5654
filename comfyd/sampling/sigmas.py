"""The discrete noise schedule of SD1/SD2/SDXL, its timestep mapping, and ComfyUI's schedulers.

Everything here follows ComfyUI's `ModelSamplingDiscrete` and `comfy/samplers.py` numerically:
the table is built in float64 and stored as float32, the UNet timestep of a sigma is the
*nearest* table index (no interpolation), and every scheduler returns a float32 tensor of
`steps + 1` sigmas ending in 0 (except `ddim_uniform` and `beta`, which may return fewer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class DiscreteSchedule:
    """The sigma table of a discrete-time model, ascending in sigma (1000 entries, or 50 for an
    LCM-distilled one)."""

    sigmas: Tensor  # float32 [N], sigmas[0] = sigma_min, sigmas[-1] = sigma_max
    log_sigmas: Tensor  # float32 [N]
    # A distilled table keeps every skip_steps-th entry of the full one: table index i is UNet
    # timestep i * skip_steps + skip_steps - 1 (ComfyUI's ModelSamplingDiscreteDistilled).
    skip_steps: int = 1

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    @property
    def num_timesteps(self) -> int:
        return int(self.sigmas.shape[0])

    def timestep(self, sigma: float | Tensor) -> int:
        """The UNet timestep of the table entry whose log-sigma is nearest to log(sigma) (first
        index on a tie)."""
        log_sigma = torch.as_tensor(sigma, dtype=torch.float32).log()
        index = int((self.log_sigmas - log_sigma).abs().argmin())
        return index * self.skip_steps + self.skip_steps - 1

    def timesteps(self, sigmas: Tensor) -> Tensor:
        """`timestep` for every element of a 1-D tensor; int64."""
        log_sigma = sigmas.to(torch.float32).log()
        index = (log_sigma[None, :] - self.log_sigmas[:, None]).abs().argmin(dim=0)
        if self.skip_steps == 1:
            return index
        return index * self.skip_steps + (self.skip_steps - 1)

    def sigma(self, timestep: float | Tensor) -> Tensor:
        """Sigma at a (fractional) timestep: linear interpolation of log-sigma, float32."""
        t = torch.as_tensor(timestep).float()
        if self.skip_steps != 1:
            t = ((t - (self.skip_steps - 1)) / self.skip_steps).float()
        t = t.clamp(0, self.num_timesteps - 1)
        low = t.floor().long()
        high = t.ceil().long()
        w = t.frac()
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()

    def percent_to_sigma(self, percent: float) -> float:
        """Sampling progress (0 = start, 1 = end) to sigma; ConditioningSetTimestepRange uses it."""
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return float(self.sigma(torch.tensor((1.0 - percent) * 999.0)))


# The last alpha-bar of a zero-terminal-SNR table: not 0, so its sigma stays finite (ComfyUI's).
_ZSNR_LAST_ALPHA_BAR = 4.8973451890853435e-08


def _zero_terminal_snr(sigmas: Tensor) -> Tensor:
    """Rescale a float64 sigma table so that its last entry has (almost) zero SNR, keeping the
    first: shift sqrt(alpha-bar) down by its last value, then scale its first back."""
    root = (1 / (sigmas * sigmas + 1)).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * (first / (first - last))
    alpha_bar = root**2
    alpha_bar[-1] = _ZSNR_LAST_ALPHA_BAR
    return ((1 - alpha_bar) / alpha_bar) ** 0.5


@lru_cache(maxsize=8)
def discrete_schedule(
    beta_start: float = 0.00085, beta_end: float = 0.012, num_timesteps: int = 1000, zsnr: bool = False
) -> DiscreteSchedule:
    """The "linear" (sqrt-spaced, a.k.a. scaled_linear) beta schedule every SD1/SD2/SDXL model
    uses; `zsnr` rescales it to zero terminal SNR (ModelSamplingDiscrete's zsnr option)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
    if zsnr:
        sigmas = _zero_terminal_snr(sigmas)
    return DiscreteSchedule(sigmas=sigmas.float(), log_sigmas=sigmas.log().float())


@lru_cache(maxsize=8)
def distilled_schedule(full: DiscreteSchedule, original_steps: int = 50) -> DiscreteSchedule:
    """The table an LCM-distilled model was trained on: every (N / original_steps)-th entry of
    the full table, counted down from its last."""
    skip = full.num_timesteps // original_steps
    picked = torch.stack([full.sigmas[full.num_timesteps - 1 - x * skip] for x in range(original_steps)])
    sigmas = picked.flip(0).float()
    return DiscreteSchedule(sigmas=sigmas, log_sigmas=sigmas.log().float(), skip_steps=skip)


# --- schedulers ------------------------------------------------------------------------------


def _append_zero(sigmas: Tensor) -> Tensor:
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def normal_scheduler(schedule: DiscreteSchedule, steps: int, sgm: bool = False) -> Tensor:
    """Evenly spaced timesteps from the last to the first table entry, mapped back to sigmas."""
    start = float(schedule.timestep(schedule.sigmas[-1]))
    end = float(schedule.timestep(schedule.sigmas[0]))
    append_zero = True
    if sgm:
        timesteps = torch.linspace(start, end, steps + 1)[:-1]
    else:
        # A schedule whose smallest sigma is already ~0 ends on it instead of an appended zero.
        if math.isclose(float(schedule.sigma(end)), 0, abs_tol=0.00001):
            steps += 1
            append_zero = False
        timesteps = torch.linspace(start, end, steps)
    sigmas = [float(schedule.sigma(t)) for t in timesteps]
    if append_zero:
        sigmas.append(0.0)
    return torch.tensor(sigmas, dtype=torch.float32)


def sgm_uniform_scheduler(schedule: DiscreteSchedule, steps: int) -> Tensor:
    return normal_scheduler(schedule, steps, sgm=True)


def simple_scheduler(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Every (N/steps)-th table entry from the top."""
    stride = schedule.num_timesteps / steps
    sigmas = [float(schedule.sigmas[-(1 + int(i * stride))]) for i in range(steps)]
    sigmas.append(0.0)
    return torch.tensor(sigmas, dtype=torch.float32)


def ddim_uniform_scheduler(schedule: DiscreteSchedule, steps: int) -> Tensor:
    """Table entries 1, 1+k, 1+2k, ... (k = N // steps), reversed, after a leading 0."""
    n = schedule.num_timesteps
    index = 1
    if math.isclose(float(schedule.sigmas[index]), 0, abs_tol=0.00001):
        steps += 1
        sigmas: list[float] = []
    else:
        sigmas = [0.0]
    stride = max(n // steps, 1)
    while index < n:
        sigmas.append(float(schedule.sigmas[index]))
        index += stride
    return torch.tensor(sigmas[::-1], dtype=torch.float32)


def beta_scheduler(schedule: DiscreteSchedule, steps: int, alpha: float = 0.6, beta: float = 0.6) -> Tensor:
    """Timesteps at the quantiles of a Beta(0.6, 0.6) distribution (arXiv 2407.12173)."""
    last_index = schedule.num_timesteps - 1
    quantiles = 1 - np.linspace(0, 1, steps, endpoint=False)
    import scipy.stats  # only this scheduler needs scipy; a GPU host may not carry it

    timesteps = np.rint(scipy.stats.beta.ppf(quantiles, alpha, beta) * last_index)
    sigmas: list[float] = []
    previous = -1.0
    for t in timesteps:
        if t != previous:  # rounding can repeat a timestep; keep it once
            sigmas.append(float(schedule.sigmas[int(t)]))
        previous = t
    sigmas.append(0.0)
    return torch.tensor(sigmas, dtype=torch.float32)


def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. (2022): evenly spaced in sigma^(1/rho)."""
    ramp = torch.linspace(0, 1, n)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    return _append_zero((max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho)


def exponential_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in log sigma."""
    return _append_zero(torch.linspace(math.log(sigma_max), math.log(sigma_min), n).exp())


def linear_quadratic_scheduler(
    schedule: DiscreteSchedule, steps: int, threshold_noise: float = 0.025, linear_steps: int | None = None
) -> Tensor:
    """Linear then quadratic in (1 - sigma/sigma_max) (Mochi's schedule)."""
    if steps == 1:
        fractions = [1.0, 0.0]
    else:
        if linear_steps is None:
            linear_steps = steps // 2
        linear_part = [i * threshold_noise / linear_steps for i in range(linear_steps)]
        threshold_step_diff = linear_steps - threshold_noise * steps
        quadratic_steps = steps - linear_steps
        quadratic_coef = threshold_step_diff / (linear_steps * quadratic_steps**2)
        linear_coef = threshold_noise / linear_steps - 2 * threshold_step_diff / (quadratic_steps**2)
        const = quadratic_coef * (linear_steps**2)
        quadratic_part = [
            quadratic_coef * (i**2) + linear_coef * i + const for i in range(linear_steps, steps)
        ]
        fractions = [1.0 - f for f in linear_part + quadratic_part + [1.0]]
    return torch.tensor(fractions, dtype=torch.float32) * schedule.sigmas[-1]


def kl_optimal_sigmas(n: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Evenly spaced in arctan(sigma) (AYS 'KL-optimal').

    One step would divide 0 by 0 (ComfyUI then samples NaN); it starts at sigma_max instead.
    """
    fraction = torch.arange(n, dtype=torch.float32).div_(max(n - 1, 1))
    sigmas = fraction.new_zeros(n + 1)
    sigmas[:-1] = (fraction * math.atan(sigma_min) + (1 - fraction) * math.atan(sigma_max)).tan_()
    return sigmas


def _from_range(fn: Callable[[int, float, float], Tensor]) -> Callable[[DiscreteSchedule, int], Tensor]:
    def scheduler(schedule: DiscreteSchedule, steps: int) -> Tensor:
        return fn(steps, schedule.sigma_min, schedule.sigma_max)

    return scheduler


# ComfyUI's SCHEDULER_HANDLERS, in its order (the order of the KSampler scheduler list).
SCHEDULERS: dict[str, Callable[[DiscreteSchedule, int], Tensor]] = {
    "simple": simple_scheduler,
    "sgm_uniform": sgm_uniform_scheduler,
    "karras": _from_range(karras_sigmas),
    "exponential": _from_range(exponential_sigmas),
    "ddim_uniform": ddim_uniform_scheduler,
    "beta": beta_scheduler,
    "normal": normal_scheduler,
    "linear_quadratic": linear_quadratic_scheduler,
    "kl_optimal": _from_range(kl_optimal_sigmas),
}
SCHEDULER_NAMES: list[str] = list(SCHEDULERS)

# These samplers look one sigma ahead of the last step; ComfyUI schedules one more step for them
# and drops the penultimate sigma.
DISCARD_PENULTIMATE_SIGMA_SAMPLERS = frozenset({"dpm_2", "dpm_2_ancestral", "uni_pc", "uni_pc_bh2"})


def calculate_sigmas(schedule: DiscreteSchedule, scheduler: str, steps: int) -> Tensor:
    """The raw schedule of `steps` steps (float32, CPU)."""
    fn = SCHEDULERS.get(scheduler)
    if fn is None:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_NAMES}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    return fn(schedule, steps)


def sampler_sigmas(schedule: DiscreteSchedule, scheduler: str, sampler_name: str, steps: int) -> Tensor:
    """`calculate_sigmas` plus the penultimate-sigma drop for the samplers that need it."""
    if sampler_name in DISCARD_PENULTIMATE_SIGMA_SAMPLERS:
        sigmas = calculate_sigmas(schedule, scheduler, steps + 1)
        return torch.cat([sigmas[:-2], sigmas[-1:]])
    return calculate_sigmas(schedule, scheduler, steps)


def ksampler_sigmas(
    schedule: DiscreteSchedule, scheduler: str, sampler_name: str, steps: int, denoise: float | None = 1.0
) -> Tensor:
    """The sigmas KSampler runs for `steps` steps at `denoise` strength.

    denoise < 1 schedules int(steps / denoise) steps and keeps the last steps + 1 sigmas, so
    img2img starts part way down the same curve; denoise <= 0 gives no sigmas (nothing to do).
    """
    if denoise is None or denoise > 0.9999:
        return sampler_sigmas(schedule, scheduler, sampler_name, steps)
    if denoise <= 0.0:
        return torch.zeros([0], dtype=torch.float32)
    total = int(steps / denoise)
    return sampler_sigmas(schedule, scheduler, sampler_name, total)[-(steps + 1) :]
