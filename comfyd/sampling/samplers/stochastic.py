"""Stochastic samplers drawing fresh Gaussian noise per step (seeded like the ancestral ones):
ddpm, er_sde (ER-SDE-Solver-3, arXiv 2309.06169), seeds_2 and seeds_3 (SEEDS, arXiv 2305.14267).

Formulas as ComfyUI 0.3.64 runs them, in half-log-SNR time (lambda = -log sigma for EPS/V models,
log((1 - sigma) / sigma) for flow models, whose first sigma of 1 moves a hair down). ddpm has no
flow form in ComfyUI either: it runs its variance-preserving step on every model.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import (
    Denoiser,
    SamplerRun,
    half_log_snr,
    offset_first_sigma,
    scaled,
    sigma_at,
)

NoiseScaler = Callable[[Tensor], Tensor]


def sample_ddpm(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    """The DDPM ancestral step in variance-preserving space."""
    noise = AncestralNoise(x, run.seed)
    for i in range(len(sigmas) - 1):
        sigma, sigma_prev = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        run.report(i, x, denoised)
        eps = (x - denoised) / float(sigma)
        x_vp = x / float(torch.sqrt(1.0 + sigma**2.0))
        alpha_cumprod = 1 / ((sigma * sigma) + 1)
        alpha_cumprod_prev = 1 / ((sigma_prev * sigma_prev) + 1)
        alpha = alpha_cumprod / alpha_cumprod_prev
        mu = float((1.0 / alpha).sqrt()) * (
            x_vp - (float(1 - alpha) * eps) / float((1 - alpha_cumprod).sqrt())
        )
        if sigma_prev > 0:
            spread = ((1 - alpha) * (1.0 - alpha_cumprod_prev) / (1.0 - alpha_cumprod)).sqrt()
            mu = mu + float(spread) * noise(sigma, sigma_prev)
            mu = mu * float(torch.sqrt(1.0 + sigma_prev**2.0))
        x = mu
    return x


def er_sde_default_noise_scaler(x: Tensor) -> Tensor:
    return x * ((x**0.3).exp() + 10.0)


def reverse_time_sde_noise_scaler(eta: float) -> NoiseScaler:
    """SamplerER_SDE's "Reverse-time SDE" and "ODE" solver types."""

    def scaler(x: Tensor) -> Tensor:
        return x ** (eta + 1)

    return scaler


_ER_SDE_POINTS = 200.0


def sample_er_sde(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    s_noise: float = 1.0,
    noise_scaler: NoiseScaler | None = None,
    max_stage: int = 3,
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    scaler = er_sde_default_noise_scaler if noise_scaler is None else noise_scaler
    points = torch.arange(0, _ER_SDE_POINTS, dtype=torch.float32)
    sigmas = offset_first_sigma(sigmas, run)
    er_lambdas = half_log_snr(sigmas, run.flow).neg().exp()  # sigma / alpha, through the half-log-SNR like ComfyUI
    old_denoised: Tensor | None = None
    old_denoised_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        run.report(i, x, denoised)
        stage = min(max_stage, i + 1)
        if sigma_next == 0:
            x = denoised
        else:
            lambda_s, lambda_t = er_lambdas[i], er_lambdas[i + 1]
            alpha_s = sigma / lambda_s
            alpha_t = sigma_next / lambda_t
            r_alpha = alpha_t / alpha_s
            r = scaler(lambda_t) / scaler(lambda_s)
            x = float(r_alpha * r) * x + float(alpha_t * (1 - r)) * denoised
            if stage >= 2 and old_denoised is not None:
                dt = lambda_t - lambda_s
                step = -dt / _ER_SDE_POINTS
                positions = lambda_t + points * step
                scaled_positions = scaler(positions)
                s = torch.sum(1 / scaled_positions) * step
                denoised_d = (denoised - old_denoised) / float(lambda_s - er_lambdas[i - 1])
                x = x + float(alpha_t * (dt + s * scaler(lambda_t))) * denoised_d
                if stage >= 3 and old_denoised_d is not None:
                    s_u = torch.sum((positions - lambda_s) / scaled_positions) * step
                    denoised_u = (denoised_d - old_denoised_d) / float((lambda_s - er_lambdas[i - 2]) / 2)
                    x = x + float(alpha_t * ((dt**2) / 2 + s_u * scaler(lambda_t))) * denoised_u
                old_denoised_d = denoised_d
            if s_noise > 0:
                spread = (lambda_t**2 - lambda_s**2 * r**2).sqrt().nan_to_num(nan=0.0)
                x = x + scaled(float(alpha_t) * noise(sigma, sigma_next), s_noise) * float(spread)
        old_denoised = denoised
    return x


def _h_phi_1(h: Tensor) -> Tensor:
    return torch.expm1(h)


def _h_phi_2(h: Tensor) -> Tensor:
    return (torch.expm1(h) - h) / h


def _first_stage(
    x: Tensor, denoised: Tensor, sigma: Tensor, sigma_s_1: Tensor, alpha_s_1: Tensor, r: float, h: Tensor,
    h_eta: Tensor, eta: float, noise: AncestralNoise | None, s_noise: float,
) -> tuple[Tensor, Tensor | None]:
    """SEEDS' first exponential step to sigma_s_1 (fraction `r` of the step) and the SDE noise it
    injects (None without noise), which the later stages carry on."""
    x_2 = float(sigma_s_1 / sigma * (-r * h * eta).exp()) * x - float(alpha_s_1 * _h_phi_1(-r * h_eta)) * denoised
    if noise is None:
        return x_2, None
    sde_noise = float((-2 * r * h * eta).expm1().neg().sqrt()) * noise(sigma, sigma_s_1)
    return x_2 + scaled(sde_noise * float(sigma_s_1), s_noise), sde_noise


def _carried_noise(sde_noise: Tensor, segment: Tensor, fresh: Tensor) -> Tensor:
    """The SDE noise carried over a further `segment` (in -h*eta units) with fresh noise mixed in."""
    return sde_noise * float(segment.exp()) + float(segment.mul(2).expm1().neg().sqrt()) * fresh


def sample_seeds_2(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    inject = eta > 0 and s_noise > 0
    sigmas = offset_first_sigma(sigmas, run)
    fac = 1 / (2 * r)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        run.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma, run.flow), half_log_snr(sigma_next, run.flow)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r)
        sigma_s_1 = sigma_at(lambda_s_1, run.flow)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_t = sigma_next * lambda_t.exp()

        x_2, sde_noise = _first_stage(x, denoised, sigma, sigma_s_1, alpha_s_1, r, h, h_eta, eta,
                                      noise if inject else None, s_noise)
        denoised_2 = model(x_2, float(sigma_s_1))

        denoised_d = torch.lerp(denoised, denoised_2, fac)
        x = float(sigma_next / sigma * (-h * eta).exp()) * x - float(alpha_t * _h_phi_1(-h_eta)) * denoised_d
        if sde_noise is not None:
            sde_noise = _carried_noise(sde_noise, (r - 1) * h * eta, noise(sigma_s_1, sigma_next))
            x = x + scaled(sde_noise * float(sigma_next), s_noise)
    return x


def sample_seeds_3(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r_1: float = 1.0 / 3,
    r_2: float = 2.0 / 3,
) -> Tensor:
    noise = AncestralNoise(x, run.seed)
    inject = eta > 0 and s_noise > 0
    sigmas = offset_first_sigma(sigmas, run)
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        run.report(i, x, denoised)
        if sigma_next == 0:
            x = denoised
            continue
        lambda_s, lambda_t = half_log_snr(sigma, run.flow), half_log_snr(sigma_next, run.flow)
        h = lambda_t - lambda_s
        h_eta = h * (eta + 1)
        lambda_s_1 = torch.lerp(lambda_s, lambda_t, r_1)
        lambda_s_2 = torch.lerp(lambda_s, lambda_t, r_2)
        sigma_s_1, sigma_s_2 = sigma_at(lambda_s_1, run.flow), sigma_at(lambda_s_2, run.flow)
        alpha_s_1 = sigma_s_1 * lambda_s_1.exp()
        alpha_s_2 = sigma_s_2 * lambda_s_2.exp()
        alpha_t = sigma_next * lambda_t.exp()

        x_2, sde_noise = _first_stage(x, denoised, sigma, sigma_s_1, alpha_s_1, r_1, h, h_eta, eta,
                                      noise if inject else None, s_noise)
        denoised_2 = model(x_2, float(sigma_s_1))

        a3_2 = r_2 / r_1 * _h_phi_2(-r_2 * h_eta)
        a3_1 = _h_phi_1(-r_2 * h_eta) - a3_2
        x_3 = float(sigma_s_2 / sigma * (-r_2 * h * eta).exp()) * x - float(alpha_s_2) * (
            float(a3_1) * denoised + float(a3_2) * denoised_2
        )
        if sde_noise is not None:
            sde_noise = _carried_noise(sde_noise, (r_1 - r_2) * h * eta, noise(sigma_s_1, sigma_s_2))
            x_3 = x_3 + scaled(sde_noise * float(sigma_s_2), s_noise)
        denoised_3 = model(x_3, float(sigma_s_2))

        b3 = _h_phi_2(-h_eta) / r_2
        b1 = _h_phi_1(-h_eta) - b3
        x = float(sigma_next / sigma * (-h * eta).exp()) * x - float(alpha_t) * (
            float(b1) * denoised + float(b3) * denoised_3
        )
        if sde_noise is not None:
            sde_noise = _carried_noise(sde_noise, (r_2 - 1) * h * eta, noise(sigma_s_2, sigma_next))
            x = x + scaled(sde_noise * float(sigma_next), s_noise)
    return x
