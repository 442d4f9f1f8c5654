"""What every sampler function receives, and the small helpers they share.

A sampler is `fn(model, x, sigmas, run) -> x`: `model(x, sigma)` returns the denoised estimate
(classifier-free guidance and inpaint masking already applied), `x` is the noised start latent,
`sigmas` the CPU float32 schedule (ending in 0 unless a KSamplerAdvanced stops early) and `run`
holds the seed, the per-step callback and what a few samplers need besides: the CFG++ samplers
read the unguided (negative-prompt) prediction of the last model call through `run.uncond()`,
SA-Solver maps sampling progress to sigma with `run.schedule`. Tunable samplers (the Sampler*
nodes) take their options as keyword arguments after `run`.

Scalar coefficients are computed on 0-dim float32 CPU tensors in the order ComfyUI computes them,
so the latents see the same float32 factors; they meet the latents as Python floats, which keeps
the GPU free of host syncs and tiny device tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from comfyd.sampling.sigmas import DiscreteSchedule


class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: float) -> Tensor: ...


StepCallback = Callable[[int, Tensor, Tensor], None]  # (step index, x, denoised)


@dataclass(frozen=True)
class SamplerRun:
    seed: int
    callback: StepCallback | None = None
    # The negative prompt's prediction at the last model call (CFG++ samplers); None when the
    # guider cannot provide one.
    last_uncond: Callable[[], Tensor | None] | None = None
    schedule: DiscreteSchedule | None = None
    # A flow-matching (CONST) model: the samplers with a rectified-flow form use it.
    flow: bool = False

    def report(self, step: int, x: Tensor, denoised: Tensor) -> None:
        if self.callback is not None:
            self.callback(step, x, denoised)

    def uncond(self) -> Tensor:
        value = self.last_uncond() if self.last_uncond is not None else None
        if value is None:
            raise ValueError("this sampler (CFG++) needs a guider with a negative prediction")
        return value


SamplerFn = Callable[[Denoiser, Tensor, Tensor, SamplerRun], Tensor]


# How far into sampling the first sigma of a flow schedule moves when it is 1 (log-SNR infinite).
SNR_OFFSET_PERCENT = 1e-4


def half_log_snr(sigma: Tensor, flow: bool) -> Tensor:
    """lambda = log(alpha / sigma): -log sigma for EPS/V models (alpha 1), log((1 - sigma) / sigma)
    for flow models (alpha = 1 - sigma)."""
    return sigma.logit().neg() if flow else sigma.log().neg()


def sigma_at(half_log_snr: Tensor, flow: bool) -> Tensor:
    """The inverse of `half_log_snr`."""
    return half_log_snr.neg().sigmoid() if flow else half_log_snr.neg().exp()


def offset_first_sigma(sigmas: Tensor, run: SamplerRun) -> Tensor:
    """A flow schedule starting at sigma 1 (infinite log-SNR) starts a hair later instead, where
    the model's own schedule puts 0.01 % of sampling progress; EPS/V schedules are unchanged."""
    if not run.flow or len(sigmas) <= 1 or sigmas[0] < 1:
        return sigmas
    moved = sigmas.clone()
    if run.schedule is not None:
        moved[0] = run.schedule.percent_to_sigma(SNR_OFFSET_PERCENT)
    else:  # an unshifted flow schedule
        moved[0] = 1.0 - SNR_OFFSET_PERCENT
    return moved


def f32(value: float | Tensor) -> Tensor:
    """A 0-dim float32 CPU tensor (ComfyUI's scalars are float32 tensors)."""
    return torch.as_tensor(value, dtype=torch.float32)


def to_d(x: Tensor, sigma: float, denoised: Tensor) -> Tensor:
    """The Karras ODE derivative dx/dsigma = (x - D(x)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0) -> tuple[Tensor, Tensor]:
    """(sigma_down, sigma_up): step down deterministically to sigma_down, then add sigma_up noise."""
    if not eta:
        return sigma_to, f32(0.0)
    candidate = eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    # Python's min, as ComfyUI takes it: sigma_to unless the candidate is smaller, so a NaN candidate
    # (sigma_from infinite, at a flow model's sigma 1 in CFG++) gives sigma_to.
    sigma_up = candidate if candidate < sigma_to else sigma_to
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up


def scaled(noise: Tensor, s_noise: float) -> Tensor:
    """noise * s_noise, skipping the multiply at the default 1 (bit-identical either way)."""
    return noise if s_noise == 1.0 else noise * s_noise
