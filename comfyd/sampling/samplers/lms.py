"""Linear multistep (k-diffusion `sample_lms`, order 4)."""

from __future__ import annotations

from numpy.polynomial import Polynomial
from torch import Tensor

from comfyd.sampling.samplers.base import Denoiser, SamplerRun, to_d


def lms_coefficient(order: int, t: list[float], i: int, j: int) -> float:
    """Integral over [t_i, t_(i+1)] of the Lagrange basis polynomial of node t_(i-j).

    The nodes are the last `order` sigmas t_i, t_(i-1), ...; k-diffusion integrates the same
    polynomial numerically (scipy quad), which is exact for these degrees.
    """
    if order - 1 > i:
        raise ValueError(f"LMS order {order} too high for step {i}")
    basis = Polynomial([1.0])
    for k in range(order):
        if k == j:
            continue
        basis = basis * Polynomial([-t[i - k], 1.0]) / (t[i - j] - t[i - k])
    antiderivative = basis.integ()
    return float(antiderivative(t[i + 1]) - antiderivative(t[i]))


def sample_lms(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun, order: int = 4) -> Tensor:
    sig = sigmas.tolist()
    history: list[Tensor] = []  # derivatives of the last `order` steps, oldest first
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        history.append(to_d(x, sig[i], denoised))
        if len(history) > order:
            history.pop(0)
        run.report(i, x, denoised)
        if sig[i + 1] == 0:
            x = denoised
        else:
            current_order = min(i + 1, order)
            step = None
            for j, d in enumerate(reversed(history)):
                term = lms_coefficient(current_order, sig, i, j) * d
                step = term if step is None else step + term
            x = x + step
    return x
