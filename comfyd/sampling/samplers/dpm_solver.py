"""DPM-Solver (Lu et al. 2022, arXiv 2206.00927) in its two k-diffusion forms: dpm_fast (fixed
steps of order 3, 2, 1 spending exactly len(sigmas) - 1 model calls) and dpm_adaptive (embedded
2/3-order pairs, step size from a PID controller on the local error).

Both integrate in t = -log sigma from the first sigma to the last positive one, and neither
visits the schedule's other sigmas; dpm_adaptive chooses its own steps, as ComfyUI's does, from
the same error arithmetic. Like ComfyUI they end at the smallest positive sigma, not at 0.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from comfyd.sampling.noise import AncestralNoise
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, ancestral_step, scaled


def _sigma(t: Tensor) -> Tensor:
    return t.neg().exp()


def _t(sigma: Tensor) -> Tensor:
    return -sigma.log()


class _Solver:
    """The eps-prediction steps, with the model calls of one step cached by name."""

    def __init__(self, model: Denoiser) -> None:
        self.model = model

    def eps(self, cache: dict[str, Tensor], key: str, x: Tensor, t: Tensor) -> Tensor:
        if key not in cache:
            sigma = _sigma(t)
            cache[key] = (x - self.model(x, float(sigma))) / float(sigma)
        return cache[key]

    def step_1(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        return x - float(_sigma(t_next) * h.expm1()) * eps

    def step_2(
        self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor], r1: float = 0.5
    ) -> Tensor:
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        u1 = x - float(_sigma(s1) * (r1 * h).expm1()) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        return (
            x
            - float(_sigma(t_next) * h.expm1()) * eps
            - float(_sigma(t_next) / (2 * r1) * h.expm1()) * (eps_r1 - eps)
        )

    def step_3(self, x: Tensor, t: Tensor, t_next: Tensor, cache: dict[str, Tensor]) -> Tensor:
        r1, r2 = 1 / 3, 2 / 3
        h = t_next - t
        eps = self.eps(cache, "eps", x, t)
        s1 = t + r1 * h
        s2 = t + r2 * h
        u1 = x - float(_sigma(s1) * (r1 * h).expm1()) * eps
        eps_r1 = self.eps(cache, "eps_r1", u1, s1)
        u2 = (
            x
            - float(_sigma(s2) * (r2 * h).expm1()) * eps
            - float(_sigma(s2) * (r2 / r1) * ((r2 * h).expm1() / (r2 * h) - 1)) * (eps_r1 - eps)
        )
        eps_r2 = self.eps(cache, "eps_r2", u2, s2)
        return (
            x
            - float(_sigma(t_next) * h.expm1()) * eps
            - float(_sigma(t_next) / r2 * (h.expm1() / h - 1)) * (eps_r2 - eps)
        )


def _range(sigmas: Tensor) -> tuple[Tensor, Tensor]:
    """(sigma_max, sigma_min): the first sigma and the last positive one."""
    sigma_min = sigmas[-1]
    if sigma_min == 0:
        sigma_min = sigmas[-2]
    if sigma_min <= 0 or sigmas[0] <= 0:
        raise ValueError("dpm_fast / dpm_adaptive need positive sigmas")
    return sigmas[0].clone(), sigma_min.clone()


def sample_dpm_fast(
    model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, eta: float = 0.0, s_noise: float = 1.0
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    sigma_max, sigma_min = _range(sigmas)
    nfe = len(sigmas) - 1
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    solver = _Solver(model)
    noise = AncestralNoise(x, run.seed)
    m = math.floor(nfe / 3) + 1
    ts = torch.linspace(float(t_start), float(t_end), m + 1)
    orders = [3] * (m - 2) + [2, 1] if nfe % 3 == 0 else [3] * (m - 1) + [nfe % 3]
    for i, order in enumerate(orders):
        cache: dict[str, Tensor] = {}
        t, t_next = ts[i], ts[i + 1]
        if eta:
            sd, _ = ancestral_step(_sigma(t), _sigma(t_next), eta)
            t_next_ = torch.minimum(t_end, _t(sd))
            su = float((_sigma(t_next) ** 2 - _sigma(t_next_) ** 2) ** 0.5)
        else:
            t_next_, su = t_next, 0.0
        eps = solver.eps(cache, "eps", x, t)
        run.report(min(i, nfe - 1), x, x - float(_sigma(t)) * eps)
        if order == 1:
            x = solver.step_1(x, t, t_next_, cache)
        elif order == 2:
            x = solver.step_2(x, t, t_next_, cache)
        else:
            x = solver.step_3(x, t, t_next_, cache)
        if su:
            x = x + su * scaled(noise(_sigma(t), _sigma(t_next)), s_noise)
    return x


class _PIDController:
    """Step-size control from the last three inverse errors."""

    def __init__(
        self, h: float, pcoeff: float, icoeff: float, dcoeff: float, order: float, accept_safety: float
    ):
        self.h = h
        self.b1 = (pcoeff + icoeff + dcoeff) / order
        self.b2 = -(pcoeff + 2 * dcoeff) / order
        self.b3 = dcoeff / order
        self.accept_safety = accept_safety
        self.eps = 1e-8
        self.errs: list[float] = []

    def propose_step(self, error: float) -> bool:
        inv_error = 1 / (error + self.eps)
        if not self.errs:
            self.errs = [inv_error, inv_error, inv_error]
        self.errs[0] = inv_error
        factor = self.errs[0] ** self.b1 * self.errs[1] ** self.b2 * self.errs[2] ** self.b3
        factor = 1 + math.atan(factor - 1)
        accept = factor >= self.accept_safety
        if accept:
            self.errs[2] = self.errs[1]
            self.errs[1] = self.errs[0]
        self.h *= factor
        return accept


_MAX_ADAPTIVE_ATTEMPTS = 10000  # a bound on a runaway controller (tiny tolerances)


def sample_dpm_adaptive(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    order: int = 3,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    pcoeff: float = 0.0,
    icoeff: float = 1.0,
    dcoeff: float = 0.0,
    accept_safety: float = 0.81,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> Tensor:
    if len(sigmas) <= 1:
        return x
    if order not in (2, 3):
        raise ValueError(f"dpm_adaptive order must be 2 or 3, got {order}")
    sigma_max, sigma_min = _range(sigmas)
    t_start, t_end = _t(sigma_max), _t(sigma_min)
    solver = _Solver(model)
    noise = AncestralNoise(x, run.seed)
    atol_t = torch.tensor(atol)
    rtol_t = torch.tensor(rtol)
    s = t_start
    x_prev = x
    pid = _PIDController(abs(h_init), pcoeff, icoeff, dcoeff, 1.5 if eta else order, accept_safety)
    total = len(sigmas) - 1
    attempts = 0
    while s < t_end - 1e-5:
        attempts += 1
        if attempts > _MAX_ADAPTIVE_ATTEMPTS:
            raise ValueError("dpm_adaptive did not converge; loosen rtol/atol")
        cache: dict[str, Tensor] = {}
        t = torch.minimum(t_end, s + pid.h)
        if eta:
            sd, _ = ancestral_step(_sigma(s), _sigma(t), eta)
            t_ = torch.minimum(t_end, _t(sd))
            su = float((_sigma(t) ** 2 - _sigma(t_) ** 2) ** 0.5)
        else:
            t_, su = t, 0.0
        eps = solver.eps(cache, "eps", x, s)
        denoised = x - float(_sigma(s)) * eps
        if order == 2:
            x_low = solver.step_1(x, s, t_, cache)
            x_high = solver.step_2(x, s, t_, cache)
        else:
            x_low = solver.step_2(x, s, t_, cache, r1=1 / 3)
            x_high = solver.step_3(x, s, t_, cache)
        delta = torch.maximum(atol_t, rtol_t * torch.maximum(x_low.abs(), x_prev.abs()))
        error = torch.linalg.norm((x_low - x_high) / delta) / x.numel() ** 0.5
        if pid.propose_step(float(error)):
            x_prev = x_low
            x = x_high + su * scaled(noise(_sigma(s), _sigma(t)), s_noise) if su else x_high
            s = t
        run.report(min(attempts - 1, total - 1), x, denoised)
    return x
