"""Multistep samplers that reuse earlier derivatives: ipndm, ipndm_v, deis, res_multistep (and its
ancestral and CFG++ forms) and gradient_estimation (and its CFG++ form).

Formulas as ComfyUI 0.3.64 runs them (k-diffusion's sampling module, its DEIS coefficient
helpers); scalar coefficients are float32 0-dim tensors, as there.
"""

from __future__ import annotations

import torch
from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, ancestral_step, scaled, to_d


def _push(buffer: list[Tensor], d: Tensor, max_order: int) -> None:
    """Keep the last max_order - 1 derivatives, oldest first."""
    buffer.append(d)
    if len(buffer) > max_order - 1:
        buffer.pop(0)


def sample_ipndm(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, max_order: int = 4) -> Tensor:
    """Improved pseudo-numerical (Adams-Bashforth) steps with fixed coefficients, order <= 4."""
    buffer: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(t_cur))
        run.report(i, x, denoised)
        d_cur = to_d(x, float(t_cur), denoised)
        order = min(max_order, i + 1)
        dt = float(t_next - t_cur)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + dt * d_cur
        elif order == 2:
            x_next = x + dt * (3 * d_cur - buffer[-1]) / 2
        elif order == 3:
            x_next = x + dt * (23 * d_cur - 16 * buffer[-1] + 5 * buffer[-2]) / 12
        else:
            x_next = x + dt * (55 * d_cur - 59 * buffer[-1] + 37 * buffer[-2] - 9 * buffer[-3]) / 24
        _push(buffer, d_cur, max_order)
        x = x_next
    return x


def _ipndm_v_coefficients(sigmas: Tensor, i: int, order: int) -> list[Tensor]:
    """Variable-step Adams-Bashforth coefficients for the current and earlier derivatives."""
    h_n = sigmas[i + 1] - sigmas[i]
    h_n_1 = sigmas[i] - sigmas[i - 1]
    if order == 2:
        return [(2 + (h_n / h_n_1)) / 2, -(h_n / h_n_1) / 2]
    h_n_2 = sigmas[i - 1] - sigmas[i - 2]
    temp1 = (1 - h_n / (3 * (h_n + h_n_1)) * (h_n * (h_n + h_n_1)) / (h_n_1 * (h_n_1 + h_n_2))) / 2
    if order == 3:
        return [
            (2 + (h_n / h_n_1)) / 2 + temp1,
            -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1,
            temp1 * h_n_1 / h_n_2,
        ]
    h_n_3 = sigmas[i - 2] - sigmas[i - 3]
    temp2 = (
        (1 - h_n / (3 * (h_n + h_n_1))) / 2
        + (1 - h_n / (2 * (h_n + h_n_1))) * h_n / (6 * (h_n + h_n_1 + h_n_2))
    ) * ((h_n * (h_n + h_n_1) * (h_n + h_n_1 + h_n_2)) / (h_n_1 * (h_n_1 + h_n_2) * (h_n_1 + h_n_2 + h_n_3)))
    ratio = h_n_1 * (h_n_1 + h_n_2) / (h_n_2 * (h_n_2 + h_n_3))
    return [
        (2 + (h_n / h_n_1)) / 2 + temp1 + temp2,
        -(h_n / h_n_1) / 2 - (1 + h_n_1 / h_n_2) * temp1 - (1 + (h_n_1 / h_n_2) + ratio) * temp2,
        temp1 * h_n_1 / h_n_2 + ((h_n_1 / h_n_2) + ratio * (1 + h_n_2 / h_n_3)) * temp2,
        -temp2 * ratio * h_n_1 / h_n_2,
    ]


def sample_ipndm_v(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, max_order: int = 4) -> Tensor:
    """iPNDM with coefficients for variable step sizes."""
    buffer: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(t_cur))
        run.report(i, x, denoised)
        d_cur = to_d(x, float(t_cur), denoised)
        order = min(max_order, i + 1)
        if t_next == 0:
            x_next = denoised
        elif order == 1:
            x_next = x + float(t_next - t_cur) * d_cur
        else:
            coefficients = _ipndm_v_coefficients(sigmas, i, order)
            total = float(coefficients[0]) * d_cur
            for k in range(1, order):
                total = total + float(coefficients[k]) * buffer[-k]
            x_next = x + float(t_next - t_cur) * total
        _push(buffer, d_cur, max_order)
        x = x_next
    return x


# --- DEIS ------------------------------------------------------------------------------------

_DEIS_POINTS = 10000  # numerical integration points per step
_EDM_SIGMA_MIN, _EDM_SIGMA_MAX, _EPSILON_S = 0.002, 80.0, 1e-3


def _edm_to_vp_time(sigmas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(t per sigma, beta_0, beta_1) of the VP-SDE that spans EDM's [0.002, 80] sigma range."""
    log_min = (torch.tensor(_EDM_SIGMA_MIN) ** 2 + 1).log()
    log_max = (torch.tensor(_EDM_SIGMA_MAX) ** 2 + 1).log()
    beta_d = 2 * (log_min / _EPSILON_S - log_max) / (_EPSILON_S - 1)
    beta_min = log_max - 0.5 * beta_d
    t = ((beta_min**2 + 2 * beta_d * (sigmas**2 + 1).log()).sqrt() - beta_min) / beta_d
    return t, beta_min, beta_d + beta_min


def _deis_integrand(beta_0: Tensor, beta_1: Tensor, taus: Tensor) -> Tensor:
    alpha = torch.exp(-0.5 * taus**2 * (beta_1 - beta_0) - taus * beta_0)
    d_log_alpha = -taus * (beta_1 - beta_0) - beta_0
    return -0.5 * d_log_alpha / torch.sqrt(alpha * (1 - alpha))


def deis_coefficients(sigmas: Tensor, max_order: int) -> list[list[Tensor]]:
    """Per step, the weights of the current and earlier derivatives ('tab' DEIS)."""
    t_steps, beta_0, beta_1 = _edm_to_vp_time(sigmas.float())
    coefficients: list[list[Tensor]] = []
    for i in range(len(t_steps) - 1):
        t_cur, t_next = t_steps[i], t_steps[i + 1]
        order = min(i + 1, max_order)
        if order == 1:
            coefficients.append([])
            continue
        taus = torch.linspace(float(t_cur), float(t_next), _DEIS_POINTS)
        dtau = (t_next - t_cur) / _DEIS_POINTS
        previous = t_steps[[i - k for k in range(order)]]
        integrand = _deis_integrand(beta_0, beta_1, taus)
        row = []
        for j in range(order):
            poly: Tensor | float = 1
            for k in range(order):
                if k != j:
                    poly = poly * ((taus - previous[k]) / (previous[j] - previous[k]))
            row.append(torch.sum(integrand * poly) * dtau)
        coefficients.append(row)
    return coefficients


def sample_deis(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, max_order: int = 3) -> Tensor:
    """Diffusion exponential integrator sampler, coefficients integrated numerically."""
    coefficients = deis_coefficients(sigmas, max_order)
    buffer: list[Tensor] = []
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(t_cur))
        run.report(i, x, denoised)
        d_cur = to_d(x, float(t_cur), denoised)
        order = 1 if t_next <= 0 else min(max_order, i + 1)
        if order == 1:
            x_next = x + float(t_next - t_cur) * d_cur
        else:
            row = coefficients[i]
            x_next = x + float(row[0]) * d_cur
            for k in range(1, order):
                x_next = x_next + float(row[k]) * buffer[-k]
        _push(buffer, d_cur, max_order)
        x = x_next
    return x


# --- RES multistep and gradient estimation -------------------------------------------------


def _res_multistep(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float, s_noise: float, cfg_pp: bool
) -> Tensor:
    """Second-order RES multistep (arXiv 2308.02157), optionally ancestral and/or CFG++."""
    noise = AncestralNoise(x, run.seed)
    old_sigma_down: Tensor | None = None
    old_denoised: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        uncond = run.uncond() if cfg_pp else denoised
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        run.report(i, x, denoised)
        if sigma_down == 0 or old_denoised is None or old_sigma_down is None:
            if cfg_pp:
                x = denoised + to_d(x, float(sigma), uncond) * float(sigma_down)
            else:
                x = x + to_d(x, float(sigma), denoised) * float(sigma_down - sigma)
        else:
            t, t_old, t_next = -sigma.log(), -old_sigma_down.log(), -sigma_down.log()
            t_prev = -sigmas[i - 1].log()
            h = t_next - t
            c2 = (t_prev - t_old) / h
            phi1 = torch.expm1(-h) / -h
            phi2 = (phi1 - 1.0) / -h
            b1 = torch.nan_to_num(phi1 - phi2 / c2, nan=0.0)
            b2 = torch.nan_to_num(phi2 / c2, nan=0.0)
            if cfg_pp:
                x = x + (denoised - uncond)
            x = float((-h).exp()) * x + float(h) * (float(b1) * uncond + float(b2) * old_denoised)
        if sigma_next > 0 and eta > 0:
            x = x + scaled(noise(sigma, sigma_next), s_noise) * float(sigma_up)
        old_denoised = uncond
        old_sigma_down = sigma_down
    return x


def sample_res_multistep(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, s_noise: float = 1.0
) -> Tensor:
    return _res_multistep(model, x, sigmas, run, eta=0.0, s_noise=s_noise, cfg_pp=False)


def sample_res_multistep_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, s_noise: float = 1.0
) -> Tensor:
    return _res_multistep(model, x, sigmas, run, eta=0.0, s_noise=s_noise, cfg_pp=True)


def sample_res_multistep_ancestral(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    return _res_multistep(model, x, sigmas, run, eta=eta, s_noise=s_noise, cfg_pp=False)


def sample_res_multistep_ancestral_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 1.0, s_noise: float = 1.0
) -> Tensor:
    return _res_multistep(model, x, sigmas, run, eta=eta, s_noise=s_noise, cfg_pp=True)


def sample_gradient_estimation(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, ge_gamma: float = 2.0, cfg_pp: bool = False
) -> Tensor:
    """Euler plus a correction from the change of the derivative (openreview o2ND9v0CeK)."""
    old_d: Tensor | None = None
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = model(x, float(sigma))
        d = to_d(x, float(sigma), run.uncond() if cfg_pp else denoised)
        run.report(i, x, denoised)
        dt = float(sigma_next - sigma)
        if sigma_next == 0:
            x = denoised
        else:
            x = denoised + d * float(sigma_next) if cfg_pp else x + d * dt
            if old_d is not None:
                x = x + (ge_gamma - 1) * (d - old_d) * dt
        old_d = d
    return x


def sample_gradient_estimation_cfg_pp(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, ge_gamma: float = 2.0
) -> Tensor:
    return sample_gradient_estimation(model, x, sigmas, run, ge_gamma=ge_gamma, cfg_pp=True)
