"""DPM-Solver++ samplers: 2S ancestral, SDE, 2M, 2M SDE (midpoint) and 3M SDE.

Formulas from k-diffusion as ComfyUI 0.3.64 runs them. The SDE samplers work in half-log-SNR
time for every model (lambda = -log sigma for EPS/V, log((1 - sigma) / sigma) for flow models,
whose first sigma of 1 moves a hair down); 2S ancestral has a separate rectified-flow form. eta and s_noise default to 1 (KSampler), the Sampler* nodes set them. 2M SDE has
ComfyUI's two solver types, midpoint (dpmpp_2m_sde) and heun (dpmpp_2m_sde_heun). The SDE samplers draw their noise from a Brownian tree over
[smallest positive sigma, largest sigma]; `brownian_on_cpu=False` is ComfyUI's `_gpu` variant.
"""

from __future__ import annotations

from torch import Tensor

from comfyd.sampling.noise import AncestralNoise, BrownianNoise
from comfyd.sampling.samplers.base import (
    Denoiser,
    SamplerRun,
    ancestral_step,
    half_log_snr,
    offset_first_sigma,
    scaled,
    sigma_at,
    to_d,
)
from comfyd.sampling.samplers.rf_ancestral import dpmpp_2s_ancestral_rf


def _brownian(x: Tensor, sigmas: Tensor, seed: int, on_cpu: bool) -> BrownianNoise:
    return BrownianNoise(x, sigmas[sigmas > 0].min(), sigmas.max(), seed=seed, on_cpu=on_cpu)


def _sde_noise(noise: Tensor, sigma_next: Tensor, h: Tensor, eta: float, s_noise: float) -> Tensor:
    """The multistep SDE samplers' noise term: noise * sigma_next * sqrt(1 - e^(-2 h eta)) * s_noise."""
    return scaled(noise * float(sigma_next) * float((-2 * h * eta).expm1().neg().sqrt()), s_noise)


def sample_dpmpp_2s_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    if run.flow:
        return dpmpp_2s_ancestral_rf(model, x, sigmas, run, eta, s_noise)
    noise = AncestralNoise(x, run.seed)
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        sigma_down, sigma_up = ancestral_step(sigmas[i], sigmas[i + 1], eta)
        run.report(i, x, denoised)
        if sigma_down == 0:
            d = to_d(x, sig[i], denoised)
            x = x + d * float(sigma_down - sigmas[i])
        else:
            # DPM-Solver++(2S) from sigma to sigma_down through the log-midpoint.
            t, t_next = -sigmas[i].log(), -sigma_down.log()
            h = t_next - t
            s = t + 0.5 * h
            sigma_s = (-s).exp()
            x_2 = float(sigma_s / (-t).exp()) * x - float((-h * 0.5).expm1()) * denoised
            denoised_2 = model(x_2, float(sigma_s))
            x = float((-t_next).exp() / (-t).exp()) * x - float((-h).expm1()) * denoised_2
        if sig[i + 1] > 0:
            x = x + scaled(noise(sig[i], sig[i + 1]), s_noise) * float(sigma_up)
    return x


def sample_dpmpp_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    brownian_on_cpu: bool = True,
    r: float = 0.5,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    noise = _brownian(x, sigmas, run.seed, brownian_on_cpu)
    sigmas = offset_first_sigma(sigmas, run)
    flow = run.flow
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        run.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma, flow), half_log_snr(sigma_next, flow)
        h = lambda_t - lambda_s
        lambda_s_1 = lambda_s + r * h
        sigma_s_1 = sigma_at(lambda_s_1, flow)
        alpha_s = sigma * lambda_s.exp()
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()

        # Step 1: to the intermediate point, with its share of the noise.
        sd, su = ancestral_step((-lambda_s).exp(), (-lambda_s_1).exp(), eta)
        h_ = -sd.log() - lambda_s
        x_2 = float((alpha_s_1 / alpha_s) * (-h_).exp()) * x - float(alpha_s_1 * (-h_).expm1()) * denoised
        if eta > 0 and s_noise > 0:
            x_2 = x_2 + float(alpha_s_1) * scaled(noise(sigma, sigma_s_1), s_noise) * float(su)
        denoised_2 = model(x_2, float(sigma_s_1))

        # Step 2: the full step with the blended estimate.
        sd, su = ancestral_step((-lambda_s).exp(), (-lambda_t).exp(), eta)
        h_ = -sd.log() - lambda_s
        denoised_d = (1 - fac) * denoised + fac * denoised_2
        x = float((alpha_t / alpha_s) * (-h_).exp()) * x - float(alpha_t * (-h_).expm1()) * denoised_d
        if eta > 0 and s_noise > 0:
            x = x + float(alpha_t) * scaled(noise(sigma, sigma_next), s_noise) * float(su)
    return x


def sample_dpmpp_2m(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    old_denoised: Tensor | None = None
    for i in range(len(sigmas) - 1):
        denoised = model(x, float(sigmas[i]))
        run.report(i, x, denoised)
        t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
        h = t_next - t
        ratio = float((-t_next).exp() / (-t).exp())
        if old_denoised is None or sigmas[i + 1] == 0:
            x = ratio * x - float((-h).expm1()) * denoised
        else:
            h_last = t - (-sigmas[i - 1].log())
            r = h_last / h
            denoised_d = float(1 + 1 / (2 * r)) * denoised - float(1 / (2 * r)) * old_denoised
            x = ratio * x - float((-h).expm1()) * denoised_d
        old_denoised = denoised
    return x


def sample_dpmpp_2m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    brownian_on_cpu: bool = True,
    solver_type: str = "midpoint",
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    noise = _brownian(x, sigmas, run.seed, brownian_on_cpu)
    sigmas = offset_first_sigma(sigmas, run)
    old_denoised: Tensor | None = None
    h: Tensor | None = None
    h_last: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        run.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigma, run.flow), half_log_snr(sigma_next, run.flow)
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * lambda_t.exp()
            phi = (-h_eta).expm1().neg()
            x = float(sigma_next / sigma * (-h * eta).exp()) * x + float(alpha_t * phi) * denoised
            if old_denoised is not None and h_last is not None:
                r = h_last / h
                if solver_type == "heun":
                    coefficient = alpha_t * (phi / (-h_eta) + 1) * (1 / r)
                else:
                    coefficient = 0.5 * alpha_t * phi * (1 / r)
                x = x + float(coefficient) * (denoised - old_denoised)
            if eta > 0 and s_noise > 0:
                x = x + _sde_noise(noise(sigma, sigma_next), sigma_next, h, eta, s_noise)
        old_denoised = denoised
        h_last = h
    return x


def sample_dpmpp_3m_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    brownian_on_cpu: bool = True,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    noise = _brownian(x, sigmas, run.seed, brownian_on_cpu)
    sigmas = offset_first_sigma(sigmas, run)
    denoised_1: Tensor | None = None
    denoised_2: Tensor | None = None
    h: Tensor | None = None
    h_1: Tensor | None = None
    h_2: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        run.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
        else:
            lambda_s, lambda_t = half_log_snr(sigma, run.flow), half_log_snr(sigma_next, run.flow)
            h = lambda_t - lambda_s
            h_eta = h * (eta + 1)
            alpha_t = sigma_next * lambda_t.exp()
            x = (
                float(sigma_next / sigma * (-h * eta).exp()) * x
                + float(alpha_t * (-h_eta).expm1().neg()) * denoised
            )
            phi_2 = h_eta.neg().expm1() / h_eta + 1
            if h_2 is not None and h_1 is not None and denoised_1 is not None and denoised_2 is not None:
                # Third order from the last three estimates.
                r0, r1 = h_1 / h, h_2 / h
                d1_0 = (denoised - denoised_1) / float(r0)
                d1_1 = (denoised_1 - denoised_2) / float(r1)
                d1 = d1_0 + (d1_0 - d1_1) * float(r0) / float(r0 + r1)
                d2 = (d1_0 - d1_1) / float(r0 + r1)
                phi_3 = phi_2 / h_eta - 0.5
                x = x + float(alpha_t * phi_2) * d1 - float(alpha_t * phi_3) * d2
            elif h_1 is not None and denoised_1 is not None:
                # Second order while only two estimates exist.
                d = (denoised - denoised_1) / float(h_1 / h)
                x = x + float(alpha_t * phi_2) * d
            if eta > 0 and s_noise > 0:
                x = x + _sde_noise(noise(sigma, sigma_next), sigma_next, h, eta, s_noise)
        denoised_1, denoised_2 = denoised, denoised_1
        h_1, h_2 = h, h_1
    return x
