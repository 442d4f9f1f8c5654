"""What every sampler function receives, and the small helpers they share.

A sampler is `fn(model, x, sigmas, run) -> x`: `model(x, sigma)` returns the denoised estimate
(classifier-free guidance and inpaint masking already applied), `x` is the noised start latent,
`sigmas` the CPU float32 schedule (ending in 0 unless a KSamplerAdvanced stops early) and `run`
holds the seed and the per-step callback.

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


class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: float) -> Tensor: ...


StepCallback = Callable[[int, Tensor, Tensor], None]  # (step index, x, denoised)


@dataclass(frozen=True)
class SamplerRun:
    seed: int
    callback: StepCallback | None = None

    def report(self, step: int, x: Tensor, denoised: Tensor) -> None:
        if self.callback is not None:
            self.callback(step, x, denoised)


SamplerFn = Callable[[Denoiser, Tensor, Tensor, SamplerRun], Tensor]


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
    sigma_up = torch.minimum(
        sigma_to, eta * (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
    )
    sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up
