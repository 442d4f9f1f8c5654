"""CFG++ samplers (Chung et al. 2024): euler_cfg_pp, euler_ancestral_cfg_pp,
dpmpp_2s_ancestral_cfg_pp and dpmpp_2m_cfg_pp.

They step along the *unguided* (negative-prompt) prediction and add the guided one only as the
target, so they read the guider's uncond prediction of the same model call (`run.uncond()`);
the guider runs the negative prompt even at cfg 1 for them, as ComfyUI does
(disable_cfg1_optimization). Formulas as ComfyUI's k-diffusion runs them: euler_ancestral_cfg_pp
reads alpha from the model's half-log-SNR (alpha = 1 - sigma for flow models); the other three
use lambda = -log sigma for every model, as ComfyUI 0.3.64 does.
"""

from __future__ import annotations

from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, ancestral_step, half_log_snr, scaled, to_d


def sample_euler_ancestral_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        uncond = run.uncond()
        run.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        alpha_s = sigma * half_log_snr(sigma, run.flow).exp()
        alpha_t = sigma_next * half_log_snr(sigma_next, run.flow).exp()
        d = to_d(x, float(sigma), float(alpha_s) * uncond)
        sigma_down, sigma_up = ancestral_step(sigma / alpha_s, sigma_next / alpha_t, eta)
        sigma_down = alpha_t * sigma_down
        x = float(alpha_t) * denoised + float(sigma_down) * d
        if eta > 0 and s_noise > 0:
            x = x + float(alpha_t) * scaled(noise(sigma, sigma_next), s_noise) * float(sigma_up)
    return x


def sample_euler_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    return sample_euler_ancestral_cfg_pp(model, x, sigmas, run, eta=0.0, s_noise=0.0)


def sample_dpmpp_2s_ancestral_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        uncond = run.uncond()
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        run.report(i, x, denoised)
        if sigma_down == 0:
            d = to_d(x, float(sigma), uncond)
            x = denoised + d * float(sigma_down)
        else:
            t, t_next = -sigma.log(), -sigma_down.log()
            h = t_next - t
            s = t + 0.5 * h
            sigma_s = (-s).exp()
            x_2 = (
                float(sigma_s / (-t).exp()) * (x + (denoised - uncond)) - float((-h * 0.5).expm1()) * denoised
            )
            denoised_2 = model(x_2, float(sigma_s))
            # ComfyUI's final update reads the uncond of this second call, not the first.
            uncond = run.uncond()
            x = (
                float((-t_next).exp() / (-t).exp()) * (x + (denoised - uncond))
                - float((-h).expm1()) * denoised_2
            )
        if sigma_next > 0:
            x = x + scaled(noise(sigma, sigma_next), s_noise) * float(sigma_up)
    return x


def sample_dpmpp_2m_cfg_pp(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    old_uncond: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        uncond = run.uncond()
        run.report(i, x, denoised)
        t, t_next = -sigma.log(), -sigma_next.log()
        h = t_next - t
        decay = (-h).exp()
        if old_uncond is None or sigma_next == 0:
            mix = float(-decay) * uncond
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            mix = float(-decay) * uncond - float((-h).expm1() * (1 / (2 * r))) * (denoised - old_uncond)
        x = denoised + mix + float(decay) * x
        old_uncond = uncond
    return x
