"""Karras-style single-step samplers: euler, euler_ancestral, heun, dpm_2, dpm_2_ancestral, lcm.

Formulas from k-diffusion as ComfyUI runs them (`comfy/k_diffusion/sampling.py`), with
s_churn = 0, eta = 1 and s_noise = 1 (the KSampler defaults).
"""

from __future__ import annotations

from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, ancestral_step, scaled, to_d
from comfyd.sampling.samplers.rf_ancestral import dpm_2_ancestral_rf, euler_ancestral_rf


def sample_euler(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        d = to_d(x, sig[i], denoised)
        run.report(i, x, denoised)
        x = x + d * (sig[i + 1] - sig[i])
    return x


def sample_euler_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    if run.flow:
        return euler_ancestral_rf(model, x, sigmas, run, eta, s_noise)
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        run.report(i, x, denoised)
        if sigma_down == 0:
            x = denoised
        else:
            d = to_d(x, sig[i], denoised)
            x = x + d * float(sigma_down - sigmas[i]) + scaled(noise(sig[i], sig[i + 1]), s_noise) * float(sigma_up)
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


def sample_dpm_2_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    if run.flow:
        return dpm_2_ancestral_rf(model, x, sigmas, run, eta, s_noise)
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
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
            x = x + scaled(noise(sig[i], sig[i + 1]), s_noise) * float(sigma_up)
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
            if run.flow:  # the model's noise scaling: sigma * noise + (1 - sigma) * x
                x = noise(sig[i], sig[i + 1]) * sig[i + 1] + x * float(1.0 - sigmas[i + 1])
            else:
                x = noise(sig[i], sig[i + 1]) * sig[i + 1] + x
    return x


def sample_heunpp2(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    """Heun++: Euler on the last step, Heun on the one before, three-point weights otherwise."""
    s_end = sigmas[-1]
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        d = to_d(x, float(sigma), denoised)
        run.report(i, x, denoised)
        dt = float(sigma_next - sigma)
        if sigma_next == s_end:
            x = x + d * dt
        elif sigmas[i + 2] == s_end:
            x_2 = x + d * dt
            denoised_2 = model(x_2, float(sigma_next))
            d_2 = to_d(x_2, float(sigma_next), denoised_2)
            w2 = sigma_next / (2 * sigmas[0])
            w1 = 1 - w2
            x = x + (d * float(w1) + d_2 * float(w2)) * dt
        else:
            x_2 = x + d * dt
            denoised_2 = model(x_2, float(sigma_next))
            d_2 = to_d(x_2, float(sigma_next), denoised_2)
            x_3 = x_2 + d_2 * float(sigmas[i + 2] - sigma_next)
            denoised_3 = model(x_3, float(sigmas[i + 2]))
            d_3 = to_d(x_3, float(sigmas[i + 2]), denoised_3)
            w = 3 * sigmas[0]
            w2 = sigma_next / w
            w3 = sigmas[i + 2] / w
            w1 = 1 - w2 - w3
            x = x + (float(w1) * d + float(w2) * d_2 + float(w3) * d_3) * dt
    return x
