"""SA-Solver, the stochastic Adams predictor-corrector (arXiv 2309.05019): sa_solver and
sa_solver_pece (which evaluates the model again after each correction).

As ComfyUI 0.3.64 runs it: data prediction in half-log-SNR time (lambda = -log sigma for EPS/V
models, log((1 - sigma) / sigma) for flow models, whose first sigma of 1 moves a hair down), noise only while sigma lies in the tau interval (by default 20 %..80 % of
sampling progress, eta 1), lower orders on the last steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, half_log_snr, offset_first_sigma, scaled

TauFn = Callable[[Tensor], float]
_DEFAULT_SDE_START, _DEFAULT_SDE_END = 0.2, 0.8


def tau_interval(start_sigma: float, end_sigma: float, eta: float = 1.0) -> TauFn:
    """Stochastic strength eta for sigmas within [end_sigma, start_sigma], else 0 (an ODE step)."""

    def tau(sigma: Tensor) -> float:
        if eta <= 0:
            return 0.0
        value = float(sigma)
        return eta if start_sigma >= value >= end_sigma else 0.0

    return tau


def _exponential_coefficients(s: Tensor, t: Tensor, order: int, tau: float) -> Tensor:
    """(1 + tau^2) * integral of exp((1 + tau^2) x) x^p over [s, t], exp((1 + tau^2) t) factored out,
    for p < order (by repeated integration by parts)."""
    tau_mul = 1 + tau**2
    h = t - s
    p = torch.arange(order, dtype=s.dtype)
    product_terms = t**p - s**p * (-tau_mul * h).exp()
    depth = p.unsqueeze(1) - p.unsqueeze(0)
    log_factorial = (p + 1).lgamma()
    coefficients = log_factorial.unsqueeze(1) - log_factorial.unsqueeze(0)
    if tau > 0:
        coefficients = coefficients - (depth * math.log(tau_mul))
    signs = torch.where(depth % 2 == 0, 1.0, -1.0)
    coefficients = (coefficients.exp() * signs).tril()
    return coefficients @ product_terms


def _b_coefficients(
    sigma_next: Tensor,
    lambdas: Tensor,
    lambda_s: Tensor,
    lambda_t: Tensor,
    tau: float,
    simple_order_2: bool,
    corrector: bool,
) -> Tensor:
    """Weights of the stored data predictions for one predictor or corrector step."""
    n = lambdas.shape[0]
    alpha_t = sigma_next * lambda_t.exp()
    if simple_order_2 and n == 2:
        tau_mul = 1 + tau**2
        h = lambda_t - lambda_s
        if corrector:
            b_1 = alpha_t * (0.5 * tau_mul * h)
            b_2 = alpha_t * (-h * tau_mul).expm1().neg() - b_1
        else:
            b_2 = alpha_t * (0.5 * tau_mul * h**2) / (lambdas[-2] - lambda_s)
            b_1 = alpha_t * (-h * tau_mul).expm1().neg() - b_2
        return torch.stack([b_2, b_1])
    integrals = _exponential_coefficients(lambda_s, lambda_t, n, tau)
    vandermonde = torch.vander(lambdas, n, increasing=True).T
    return alpha_t * torch.linalg.solve(vandermonde, integrals)


def _combine(predictions: list[Tensor], weights: Tensor) -> Tensor:
    total = predictions[0] * float(weights[0])
    for k in range(1, len(predictions)):
        total = total + predictions[k] * float(weights[k])
    return total


def sample_sa_solver(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    tau_func: TauFn | None = None,
    s_noise: float = 1.0,
    predictor_order: int = 3,
    corrector_order: int = 4,
    use_pece: bool = False,
    simple_order_2: bool = False,
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    noise_source = AncestralNoise(x, run.seed)
    sigmas = offset_first_sigma(sigmas, run)
    lambdas = half_log_snr(sigmas, run.flow)
    if tau_func is None:
        if run.schedule is None:
            raise ValueError("sa_solver needs the model's noise schedule for its default SDE interval")
        tau_func = tau_interval(
            run.schedule.percent_to_sigma(_DEFAULT_SDE_START), run.schedule.percent_to_sigma(_DEFAULT_SDE_END)
        )
    max_order = max(predictor_order, corrector_order)
    x_pred = x
    h: Tensor | float = 0.0
    tau_t = 0.0
    noise: Tensor | None = None
    predictions: list[Tensor] = []
    lower_order_to_end = float(sigmas[-1]) == 0
    n = len(sigmas)
    for i in range(n - 1):
        denoised = model(x_pred, float(sigmas[i]))
        run.report(i, x_pred, denoised)
        predictions.append(denoised)
        predictions = predictions[-max_order:]
        predictor_used = min(predictor_order, len(predictions))
        corrector_used = (
            0 if i == 0 or (sigmas[i + 1] == 0 and not use_pece) else min(corrector_order, len(predictions))
        )
        if lower_order_to_end:
            predictor_used = min(predictor_used, n - 2 - i)
            corrector_used = min(corrector_used, n - 1 - i)

        if corrector_used == 0:
            x = x_pred
        else:
            weights = _b_coefficients(
                sigmas[i], lambdas[i - corrector_used + 1 : i + 1], lambdas[i - 1], lambdas[i], tau_t,
                simple_order_2, corrector=True,
            )  # fmt: skip
            decay = sigmas[i] / sigmas[i - 1] * (-(tau_t**2) * h).exp()
            x = float(decay) * x + _combine(predictions[-corrector_used:], weights)
            if tau_t > 0 and s_noise > 0 and noise is not None:
                x = x + noise
            if use_pece:
                denoised = model(x, float(sigmas[i]))
                predictions[-1] = denoised

        if sigmas[i + 1] == 0:
            x = denoised
        else:
            tau_t = tau_func(sigmas[i + 1])
            weights = _b_coefficients(
                sigmas[i + 1], lambdas[i - predictor_used + 1 : i + 1], lambdas[i], lambdas[i + 1], tau_t,
                simple_order_2, corrector=False,
            )  # fmt: skip
            h = lambdas[i + 1] - lambdas[i]
            decay = sigmas[i + 1] / sigmas[i] * (-(tau_t**2) * h).exp()
            x_pred = float(decay) * x + _combine(predictions[-predictor_used:], weights)
            if tau_t > 0 and s_noise > 0:
                spread = (-2 * tau_t**2 * h).expm1().neg().sqrt()
                noise = scaled(
                    noise_source(sigmas[i], sigmas[i + 1]) * float(sigmas[i + 1]) * float(spread), s_noise
                )
                x_pred = x_pred + noise
    return x


def sample_sa_solver_pece(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, **options: object
) -> Tensor:
    return sample_sa_solver(model, x, sigmas, run, use_pece=True, **options)  # type: ignore[arg-type]
