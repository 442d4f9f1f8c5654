"""Karras-style single-step samplers: euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, lcm.

Formulas from k-diffusion as ComfyUI runs them (`comfy/k_diffusion/sampling.py`), with
s_churn = 0, eta = 1 and s_noise = 1 (the KSampler defaults).
"""

from __future__ import annotations

from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, ancestral_step, to_d


def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        d = to_d(x, sig[i], denoised)
        run.report(i, x, denoised)
        x = x + d * (sig[i + 1] - sig[i])
    return x


def sample_euler_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        run.report(i, x, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sig[i], denoised)
            x = x + d * float(sigma_down - sigmas[i]) + noise(sig[i], sig[i + 1]) * float(sigma_up)
    return x


def sample_heun(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        d = to_d(x, sig[i], denoised)
        run.report(i, x, denoised)
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = x + d * dt  # Euler into sigma 0: Heun's correction would divide by zero
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, sig[i + 1])
            d_2 = to_d(x_2, sig[i + 1], denoised_2)
            x = x + ((d + d_2) / 2) * dt
    return x


def _midpoint_sigma(sigma: Tensor, sigma_to: Tensor) -> Tensor:
    """The geometric mean of two sigmas, as float32 lerp of their logs."""
    return sigma.log().lerp(sigma_to.log(), 0.5).exp()


def sample_dpm_2(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        d = to_d(x, sig[i], denoised)
        run.report(i, x, denoised)
        if sig[i + 1] == 0:
            x = x + d * (sig[i + 1] - sig[i])
        else:
            sigma_mid = _midpoint_sigma(sigmas[i], sigmas[i + 1])
            x_2 = x + d * float(sigma_mid - sigmas[i])
            denoised_2 = model(x_2, float(sigma_mid))
            d_2 = to_d(x_2, float(sigma_mid), denoised_2)
            x = x + d_2 * (sig[i + 1] - sig[i])
    return x


def sample_dpm_2_ancestral(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1])
        run.report(i, x, denoised)
        d = to_d(x, sig[i], denoised)
        if sigma_down == 0:
            x = x + d * float(sigma_down - sigmas[i])
        else:
            sigma_mid = _midpoint_sigma(sigmas[i], sigma_down)
            x_2 = x + d * float(sigma_mid - sigmas[i])
            denoised_2 = model(x_2, float(sigma_mid))
            d_2 = to_d(x_2, float(sigma_mid), denoised_2)
            x = x + d_2 * float(sigma_down - sigmas[i])
            x = x + noise(sig[i], sig[i + 1]) * float(sigma_up)
    return x


def sample_lcm(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    """Latent consistency: jump to the denoised estimate, then re-noise to the next sigma."""
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        run.report(i, x, denoised)
        x = denoised
        if sig[i + 1] > 0:
            x = noise(sig[i], sig[i + 1]) * sig[i + 1] + x
    return x
