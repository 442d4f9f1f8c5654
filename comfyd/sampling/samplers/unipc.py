"""UniPC (Zhao et al. 2023), multistep, data prediction, B(h) = h (bh1) or e^h - 1 (bh2).

This follows ComfyUI's `extra_samplers/uni_pc.py` as KSampler runs it: the state lives in
variance-preserving space (x / sqrt(1 + sigma^2)), the solver order is min(3, steps - 1) with
lower orders on the first and last steps, a final sigma of 0 is replaced by 0.001 and the result
is divided by alpha(0.001). The model is asked for its noise prediction at the VE input
x * sqrt(1 + sigma^2), and the data prediction is rebuilt from it, exactly as ComfyUI does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from comfyd.sampling.samplers.base import Denoiser, SamplerRun

_FINAL_SIGMA = 0.001


# The VP noise schedule seen through sigma (ComfyUI's SigmaConvert), on 0-dim float32 tensors.
def _log_alpha(sigma: Tensor) -> Tensor:
    return 0.5 * torch.log(1 / ((sigma * sigma) + 1))


def _alpha(sigma: Tensor) -> Tensor:
    return torch.exp(_log_alpha(sigma))


def _std(sigma: Tensor) -> Tensor:
    return torch.sqrt(1.0 - torch.exp(2.0 * _log_alpha(sigma)))


def _lambda(sigma: Tensor) -> Tensor:
    log_alpha = _log_alpha(sigma)
    return log_alpha - 0.5 * torch.log(1.0 - torch.exp(2.0 * log_alpha))


class _DataPrediction:
    """x0 estimate at a VP-space point, from the wrapped VE-space denoiser."""

    def __init__(self, model: Denoiser) -> None:
        self._model = model

    def __call__(self, x: Tensor, sigma: Tensor) -> Tensor:
        s = float(sigma)
        x_ve = x * float((sigma**2 + 1.0) ** 0.5)
        eps = (x_ve - self._model(x_ve, s)) / s
        return (x - float(_std(sigma)) * eps) / float(_alpha(sigma))


def _weighted_sum(weights: Tensor, tensors: list[Tensor]) -> Tensor:
    total = tensors[0] * float(weights[0])
    for k in range(1, len(tensors)):
        total = total + tensors[k] * float(weights[k])
    return total


def _bh_update(
    predict: _DataPrediction,
    x: Tensor,
    model_prev: list[Tensor],
    t_prev: list[Tensor],
    t: Tensor,
    order: int,
    variant: str,
    use_corrector: bool,
) -> tuple[Tensor, Tensor | None]:
    """One UniP(C) step from t_prev[-1] to t using the last `order` data predictions."""
    t_prev_0 = t_prev[-1]
    lambda_prev_0 = _lambda(t_prev_0)
    lambda_t = _lambda(t)
    model_prev_0 = model_prev[-1]
    sigma_prev_0, sigma_t = _std(t_prev_0), _std(t)
    alpha_t = torch.exp(_log_alpha(t))
    h = lambda_t - lambda_prev_0

    rks: list[Tensor] = []
    d1s: list[Tensor] = []
    for i in range(1, order):
        rk = (_lambda(t_prev[-(i + 1)]) - lambda_prev_0) / h
        rks.append(rk)
        d1s.append((model_prev[-(i + 1)] - model_prev_0) / float(rk))
    rks_t = torch.tensor([*(float(r) for r in rks), 1.0], dtype=torch.float32)

    hh = -h  # data prediction
    h_phi_1 = torch.expm1(hh)
    h_phi_k = h_phi_1 / hh - 1
    b_h = hh if variant == "bh1" else torch.expm1(hh)
    factorial = 1
    rows: list[Tensor] = []
    b_values: list[Tensor] = []
    for i in range(1, order + 1):
        rows.append(torch.pow(rks_t, i - 1))
        b_values.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r_matrix = torch.stack(rows)
    b = torch.stack(b_values)

    rhos_p: Tensor | None = None
    if d1s:
        rhos_p = torch.tensor([0.5]) if order == 2 else torch.linalg.solve(r_matrix[:-1, :-1], b[:-1])
    rhos_c: Tensor | None = None
    if use_corrector:
        rhos_c = torch.tensor([0.5]) if order == 1 else torch.linalg.solve(r_matrix, b)

    x_t_ = float(sigma_t / sigma_prev_0) * x - float(alpha_t * h_phi_1) * model_prev_0
    step_scale = float(alpha_t * b_h)
    x_t = x_t_ - step_scale * _weighted_sum(rhos_p, d1s) if rhos_p is not None else x_t_

    model_t: Tensor | None = None
    if rhos_c is not None:
        model_t = predict(x_t, t)
        d1_t = model_t - model_prev_0
        correction = d1_t * float(rhos_c[-1])
        if d1s:
            correction = _weighted_sum(rhos_c[:-1], d1s) + correction
        x_t = x_t_ - step_scale * correction
    return x_t, model_t


def sample_unipc(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, variant: str = "bh1") -> Tensor:
    if variant not in ("bh1", "bh2"):
        raise ValueError(f"unknown UniPC variant {variant!r}")
    timesteps = sigmas.clone()
    if float(timesteps[-1]) == 0:
        timesteps[-1] = _FINAL_SIGMA
    predict = _DataPrediction(model)
    x = x / float(torch.sqrt(1.0 + timesteps[0] ** 2.0))
    steps = len(timesteps) - 1
    order = min(3, len(timesteps) - 2)

    model_prev: list[Tensor] = []
    t_prev: list[Tensor] = []
    for step_index in range(steps):
        if step_index == 0:
            model_prev.append(predict(x, timesteps[0]))
            t_prev.append(timesteps[0])
        elif step_index < order:
            # Warm-up: lower-order steps until `order` predictions exist.
            t = timesteps[step_index]
            x, model_x = _bh_update(
                predict, x, model_prev, t_prev, t, step_index, variant, use_corrector=True
            )
            model_prev.append(model_x if model_x is not None else predict(x, t))
            t_prev.append(t)
        else:
            # The last step_index also takes the final step (to timesteps[steps]), predictor only.
            last = step_index + (2 if step_index == steps - 1 else 1)
            for step in range(step_index, last):
                t = timesteps[step]
                step_order = min(order, steps + 1 - step)
                use_corrector = step != steps
                x, model_x = _bh_update(predict, x, model_prev, t_prev, t, step_order, variant, use_corrector)
                for i in range(order - 1):  # slide the window of the last `order` points
                    t_prev[i] = t_prev[i + 1]
                    model_prev[i] = model_prev[i + 1]
                t_prev[-1] = t
                if step < steps:
                    model_prev[-1] = model_x if model_x is not None else predict(x, t)
        run.report(step_index, x, model_prev[-1])
    return x / float(_alpha(timesteps[-1]))


def sample_unipc_bh2(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    return sample_unipc(model, x, sigmas, run, variant="bh2")
