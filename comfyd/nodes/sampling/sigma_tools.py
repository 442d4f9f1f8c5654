"""Nodes that cut and reshape SIGMAS (ComfyUI category sampling/custom_sampling/sigmas)."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.nodes.sampling.schedulers import model_schedule
from comfyd.sampling.custom_sigmas import (
    extend_intermediate_sigmas,
    flip_sigmas,
    set_first_sigma,
    split_sigmas,
    split_sigmas_denoise,
)

CATEGORY = "sampling/custom_sampling/sigmas"
HIGH_LOW = (OutputSpec("SIGMAS", name="high_sigmas"), OutputSpec("SIGMAS", name="low_sigmas"))


def check_sigmas(sigmas: Any) -> Tensor:
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
        raise ValueError("sigmas must be a SIGMAS value (a 1-D tensor)")
    return sigmas


@register_node
class SplitSigmas(Node):
    schema = NodeSchema(
        class_type="SplitSigmas",
        inputs=(Link("sigmas", "SIGMAS"), Int("step", default=0, min=0, max=10000, step=None)),
        outputs=HIGH_LOW,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, sigmas: Any, step: int) -> tuple[Tensor, Tensor]:
        return split_sigmas(check_sigmas(sigmas), step)


@register_node
class SplitSigmasDenoise(Node):
    schema = NodeSchema(
        class_type="SplitSigmasDenoise",
        inputs=(Link("sigmas", "SIGMAS"), Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01)),
        outputs=HIGH_LOW,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, sigmas: Any, denoise: float) -> tuple[Tensor, Tensor]:
        return split_sigmas_denoise(check_sigmas(sigmas), denoise)


@register_node
class FlipSigmas(Node):
    schema = NodeSchema(
        class_type="FlipSigmas",
        inputs=(Link("sigmas", "SIGMAS"),),
        outputs=(OutputSpec("SIGMAS"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, sigmas: Any) -> tuple[Tensor]:
        return (flip_sigmas(check_sigmas(sigmas)),)


@register_node
class SetFirstSigma(Node):
    schema = NodeSchema(
        class_type="SetFirstSigma",
        inputs=(
            Link("sigmas", "SIGMAS"),
            Float("sigma", default=136.0, min=0.0, max=20000.0, step=0.001, round=False),
        ),
        outputs=(OutputSpec("SIGMAS"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, sigmas: Any, sigma: float) -> tuple[Tensor]:
        sigmas = check_sigmas(sigmas)
        if len(sigmas) == 0:
            raise ValueError("sigmas is empty: there is no first sigma to set")
        return (set_first_sigma(sigmas, sigma),)


@register_node
class ExtendIntermediateSigmas(Node):
    schema = NodeSchema(
        class_type="ExtendIntermediateSigmas",
        inputs=(
            Link("sigmas", "SIGMAS"),
            Int("steps", default=2, min=1, max=100),
            Float("start_at_sigma", default=-1.0, min=-1.0, max=20000.0, step=0.01, round=False),
            Float("end_at_sigma", default=12.0, min=0.0, max=20000.0, step=0.01, round=False),
            Combo("spacing", ["linear", "cosine", "sine"]),
        ),
        outputs=(OutputSpec("SIGMAS"),),
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, sigmas: Any, steps: int, start_at_sigma: float, end_at_sigma: float, spacing: str
    ) -> tuple[Tensor]:
        return (extend_intermediate_sigmas(check_sigmas(sigmas), steps, start_at_sigma, end_at_sigma, spacing),)


@register_node
class SamplingPercentToSigma(Node):
    schema = NodeSchema(
        class_type="SamplingPercentToSigma",
        inputs=(
            Link("model", "MODEL", extra={}),
            Float("sampling_percent", default=0.0, min=0.0, max=1.0, step=0.0001),
            Boolean(
                "return_actual_sigma", default=False,
                tooltip="Return the actual sigma value instead of the value used for interval checks.\n"
                "This only affects results at 0.0 and 1.0.",
            ),
        ),
        outputs=(OutputSpec("FLOAT", name="sigma_value"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, model: Any, sampling_percent: float, return_actual_sigma: bool) -> tuple[float]:
        schedule = model_schedule(model)
        if return_actual_sigma and sampling_percent == 0.0:
            return (float(schedule.sigma_max),)
        if return_actual_sigma and sampling_percent == 1.0:
            return (float(schedule.sigma_min),)
        return (float(schedule.percent_to_sigma(sampling_percent)),)
