"""LTXVScheduler: LTX-Video's sigma schedule (comfy_extras/nodes_lt.py), computed with the same
float32 tensor operations so the sigmas are bit-identical.

`steps + 1` evenly spaced t from 1 to 0, each non-zero one time-shifted as
e^s / (e^s + (1 / t - 1)), where the shift s is linear in the latent's token count (frames x
rows x columns; 4096 without a latent): base_shift at 1024 tokens, max_shift at 4096. With
`stretch`, the non-zero sigmas are rescaled so 1 - sigma ends at 1 - terminal.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node

DEFAULT_TOKENS = 4096
_LOW_TOKENS, _HIGH_TOKENS = 1024, 4096


def latent_tokens(latent: Any) -> int:
    """Frames x rows x columns of a LATENT's samples (DEFAULT_TOKENS without one)."""
    if latent is None:
        return DEFAULT_TOKENS
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, Tensor) or samples.ndim < 3:
        raise ValueError("latent must be a LATENT with samples [B, C, ...]")
    return math.prod(samples.shape[2:])


def token_shift(tokens: int, max_shift: float, base_shift: float) -> float:
    slope = (max_shift - base_shift) / (_HIGH_TOKENS - _LOW_TOKENS)
    return tokens * slope + (base_shift - slope * _LOW_TOKENS)


def ltxv_sigmas(steps: int, max_shift: float, base_shift: float, stretch: bool, terminal: float,
                tokens: int = DEFAULT_TOKENS) -> Tensor:  # fmt: skip
    t = torch.linspace(1.0, 0.0, steps + 1)
    exp_shift = math.exp(token_shift(tokens, max_shift, base_shift))
    shifted = exp_shift / (exp_shift + (1 / t - 1) ** 1)
    sigmas = torch.where(t != 0, shifted, 0)
    if stretch:
        nonzero = sigmas != 0
        one_minus = 1.0 - sigmas[nonzero]
        scale = one_minus[-1] / (1.0 - terminal)
        sigmas[nonzero] = 1.0 - (one_minus / scale)
    return sigmas


@register_node
class LTXVScheduler(Node):
    schema = NodeSchema(
        class_type="LTXVScheduler",
        inputs=(
            Int("steps", default=20, min=1, max=10000, step=None),
            Float("max_shift", default=2.05, min=0.0, max=100.0, step=0.01),
            Float("base_shift", default=0.95, min=0.0, max=100.0, step=0.01),
            Boolean("stretch", default=True, tooltip="Stretch the sigmas to be in the range [terminal, 1]."),
            Float("terminal", default=0.1, min=0.0, max=0.99, step=0.01,
                  tooltip="The terminal value of the sigmas after stretching."),
            Link("latent", "LATENT", optional=True),
        ),  # fmt: skip
        outputs=(OutputSpec("SIGMAS"),),
        category="sampling/custom_sampling/schedulers",
    )

    def run(
        self, ctx: NodeContext, steps: int, max_shift: float, base_shift: float, stretch: bool, terminal: float,
        latent: Any = None,
    ) -> tuple[Tensor]:  # fmt: skip
        return (ltxv_sigmas(steps, max_shift, base_shift, stretch, terminal, latent_tokens(latent)),)
