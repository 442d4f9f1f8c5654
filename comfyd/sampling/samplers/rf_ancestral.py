"""The rectified-flow (RF) forms of the ancestral samplers, which ComfyUI 0.3.64 takes for flow
models (Flux, SD3, Wan, ...): euler_ancestral, dpm_2_ancestral and dpmpp_2s_ancestral.

On the straight path x = (1 - sigma) * data + sigma * noise an ancestral step goes deterministically
down to sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta), then scales towards the data
by alpha_next / alpha_down and adds the noise that brings the sample back to sigma_next.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, f32, scaled, to_d

# dpmpp_2s_ancestral's midpoint when the step starts at sigma 1 (where its log-SNR is infinite).
_SIGMA_BELOW_ONE = float(f32(0.9999))


@dataclass(frozen=True)
class RFStep:
    sigma_down: Tensor
    rescale: float  # alpha_next / alpha_down
    renoise: float  # the noise's factor after the rescale


def rf_ancestral_step(sigma: Tensor, sigma_next: Tensor, eta: float) -> RFStep:
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise = (sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2) ** 0.5
    return RFStep(sigma_down, float(alpha_next / alpha_down), float(renoise))


def _renoised(x: Tensor, step: RFStep, noise: Tensor, s_noise: float) -> Tensor:
    return step.rescale * x + scaled(noise, s_noise) * step.renoise


def euler_ancestral_rf(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float, s_noise: float
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        run.report(i, x, denoised)
        if sig[i + 1] == 0:
            x = denoised
            continue
        step = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        ratio = step.sigma_down / sigmas[i]
        x = float(ratio) * x + float(1 - ratio) * denoised
        if eta > 0:
            x = _renoised(x, step, noise(sig[i], sig[i + 1]), s_noise)
    return x


def dpm_2_ancestral_rf(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float, s_noise: float
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        step = rf_ancestral_step(sigmas[i], sigmas[i + 1], eta)
        run.report(i, x, denoised)
        d = to_d(x, sig[i], denoised)
        if step.sigma_down == 0:
            x = x + d * float(step.sigma_down - sigmas[i])
            continue
        # DPM-Solver-2 through the log-midpoint of sigma and sigma_down, then the RF renoise.
        sigma_mid = sigmas[i].log().lerp(step.sigma_down.log(), 0.5).exp()
        x_2 = x + d * float(sigma_mid - sigmas[i])
        denoised_2 = model(x_2, float(sigma_mid))
        d_2 = to_d(x_2, float(sigma_mid), denoised_2)
        x = x + d_2 * float(step.sigma_down - sigmas[i])
        x = _renoised(x, step, noise(sig[i], sig[i + 1]), s_noise)
    return x


def dpmpp_2s_ancestral_rf(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float, s_noise: float
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        sigma = sigmas[i]
        denoised = model(x, sig[i])
        step = rf_ancestral_step(sigma, sigmas[i + 1], eta)
        run.report(i, x, denoised)
        if sig[i + 1] == 0:
            d = to_d(x, sig[i], denoised)
            x = x + d * float(step.sigma_down - sigma)
        else:
            # DPM-Solver++(2S): evaluate at the log-SNR midpoint of sigma and sigma_down.
            if sig[i] == 1.0:
                sigma_s = f32(_SIGMA_BELOW_ONE)
            else:
                lam, lam_down = ((1 - sigma) / sigma).log(), ((1 - step.sigma_down) / step.sigma_down).log()
                lam_s = lam + 0.5 * (lam_down - lam)
                sigma_s = (lam_s.exp() + 1) ** -1
            ratio_s = sigma_s / sigma
            u = float(ratio_s) * x + float(1 - ratio_s) * denoised
            denoised_2 = model(u, float(sigma_s))
            ratio_down = step.sigma_down / sigma
            x = float(ratio_down) * x + float(1 - ratio_down) * denoised_2
        if sig[i + 1] > 0 and eta > 0:
            x = _renoised(x, step, noise(sig[i], sig[i + 1]), s_noise)
    return x
