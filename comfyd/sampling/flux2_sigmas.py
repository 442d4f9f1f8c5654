"""Flux.2's sigma schedule (ComfyUI's Flux2Scheduler, BFL's reference sampler): an even grid from 1
to 0, time-shifted by an empirical `mu` that grows with the image's token count and the step count.

mu is linear in the token count on two step-count anchors (10 and 200 steps) and linear in the step
count between them; above 4300 tokens the 200-step line alone. The shift is the exponential one
of Flux (`exp(mu) / (exp(mu) + 1/t - 1)`), so t = 0 stays 0.
"""

from __future__ import annotations

import math

import torch

_SLOPE_10, _OFFSET_10 = 8.73809524e-05, 1.89833333
_SLOPE_200, _OFFSET_200 = 0.00016927, 0.45666666
_LARGE = 4300
TOKEN_PIXELS = 16  # pixels per latent token side (the 2x2-patchified 8x latent)


def empirical_mu(tokens: int, steps: int) -> float:
    at_200 = _SLOPE_200 * tokens + _OFFSET_200
    if tokens > _LARGE:
        return float(at_200)
    at_10 = _SLOPE_10 * tokens + _OFFSET_10
    per_step = (at_200 - at_10) / 190.0
    return float(per_step * steps + at_200 - 200.0 * per_step)


def flux2_sigmas(steps: int, width: int, height: int) -> torch.Tensor:
    """steps + 1 sigmas (float32, last 0) for an image of width x height pixels."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    tokens = round(width * height / (TOKEN_PIXELS * TOKEN_PIXELS))
    mu = empirical_mu(tokens, steps)
    t = torch.linspace(1, 0, steps + 1)
    return math.exp(mu) / (math.exp(mu) + (1 / t - 1))
