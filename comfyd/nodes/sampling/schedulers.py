"""The scheduler nodes of custom sampling (ComfyUI category sampling/custom_sampling/schedulers):
each turns a step count (and a model's noise table where it needs one) into SIGMAS."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.sampling.custom_sigmas import (
    AYS_NOISE_LEVELS,
    OPTIMAL_STEPS_NOISE_LEVELS,
    align_your_steps_sigmas,
    basic_scheduler_sigmas,
    beta_sampling_sigmas,
    laplace_sigmas,
    optimal_steps_sigmas,
    polyexponential_sigmas,
    sd_turbo_sigmas,
    vp_sigmas,
)
from comfyd.sampling.sigmas import (
    SCHEDULER_NAMES,
    DiscreteSchedule,
    exponential_sigmas,
    karras_sigmas,
)

CATEGORY = "sampling/custom_sampling/schedulers"
SIGMAS = (OutputSpec("SIGMAS"),)
MAX_STEPS = 10000
SIGMA_MAX_DEFAULT = 14.614642  # SD1's largest sigma, ComfyUI's default
SIGMA_MIN_DEFAULT = 0.0291675


def model_schedule(model: Any) -> DiscreteSchedule:
    """The discrete noise table of a MODEL value."""
    try:
        return model.model_sampling.schedule  # the model's own (family and ModelSampling* patches)
    except AttributeError as exc:
        raise ValueError("model must be a MODEL (from a checkpoint loader)") from exc


def _steps(default: int = 20, max: int = MAX_STEPS) -> Any:
    return Int("steps", default=default, min=1, max=max, step=None)


def _sigma_range() -> tuple[Any, Any]:
    return (
        Float("sigma_max", default=SIGMA_MAX_DEFAULT, min=0.0, max=5000.0, step=0.01, round=False),
        Float("sigma_min", default=SIGMA_MIN_DEFAULT, min=0.0, max=5000.0, step=0.01, round=False),
    )


def _positive_range(sigma_max: float, sigma_min: float) -> None:
    if sigma_min <= 0 or sigma_max <= 0:
        raise ValueError(f"sigma_min and sigma_max must be positive, got {sigma_min} and {sigma_max}")


@register_node
class BasicScheduler(Node):
    schema = NodeSchema(
        class_type="BasicScheduler",
        inputs=(
            Link("model", "MODEL"),
            Combo("scheduler", SCHEDULER_NAMES),
            _steps(),
            Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, model: Any, scheduler: str, steps: int, denoise: float) -> tuple[Tensor]:
        return (basic_scheduler_sigmas(model_schedule(model), scheduler, steps, denoise),)


@register_node
class KarrasScheduler(Node):
    schema = NodeSchema(
        class_type="KarrasScheduler",
        inputs=(
            _steps(),
            *_sigma_range(),
            Float("rho", default=7.0, min=0.0, max=100.0, step=0.01, round=False),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float, rho: float
    ) -> tuple[Tensor]:
        if rho == 0:
            raise ValueError("rho must not be 0")
        return (karras_sigmas(steps, sigma_min, sigma_max, rho=rho),)


@register_node
class ExponentialScheduler(Node):
    schema = NodeSchema(
        class_type="ExponentialScheduler",
        inputs=(_steps(), *_sigma_range()),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float) -> tuple[Tensor]:
        _positive_range(sigma_max, sigma_min)
        return (exponential_sigmas(steps, sigma_min, sigma_max),)


@register_node
class PolyexponentialScheduler(Node):
    schema = NodeSchema(
        class_type="PolyexponentialScheduler",
        inputs=(
            _steps(),
            *_sigma_range(),
            Float("rho", default=1.0, min=0.0, max=100.0, step=0.01, round=False),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float, rho: float
    ) -> tuple[Tensor]:
        _positive_range(sigma_max, sigma_min)
        return (polyexponential_sigmas(steps, sigma_min, sigma_max, rho=rho),)


@register_node
class LaplaceScheduler(Node):
    schema = NodeSchema(
        class_type="LaplaceScheduler",
        inputs=(
            _steps(),
            *_sigma_range(),
            Float("mu", default=0.0, min=-10.0, max=10.0, step=0.1, round=False),
            Float("beta", default=0.5, min=0.0, max=10.0, step=0.1, round=False),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, steps: int, sigma_max: float, sigma_min: float, mu: float, beta: float
    ) -> tuple[Tensor]:
        return (laplace_sigmas(steps, sigma_min, sigma_max, mu=mu, beta=beta),)


@register_node
class VPScheduler(Node):
    schema = NodeSchema(
        class_type="VPScheduler",
        inputs=(
            _steps(),
            Float("beta_d", default=19.9, min=0.0, max=5000.0, step=0.01, round=False),
            Float("beta_min", default=0.1, min=0.0, max=5000.0, step=0.01, round=False),
            Float("eps_s", default=0.001, min=0.0, max=1.0, step=0.0001, round=False),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, steps: int, beta_d: float, beta_min: float, eps_s: float
    ) -> tuple[Tensor]:
        return (vp_sigmas(steps, beta_d=beta_d, beta_min=beta_min, eps_s=eps_s),)


@register_node
class SDTurboScheduler(Node):
    schema = NodeSchema(
        class_type="SDTurboScheduler",
        inputs=(
            Link("model", "MODEL"),
            _steps(default=1, max=10),
            Float("denoise", default=1.0, min=0, max=1.0, step=0.01),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, model: Any, steps: int, denoise: float) -> tuple[Tensor]:
        return (sd_turbo_sigmas(model_schedule(model), steps, denoise),)


@register_node
class BetaSamplingScheduler(Node):
    schema = NodeSchema(
        class_type="BetaSamplingScheduler",
        inputs=(
            Link("model", "MODEL"),
            _steps(),
            Float("alpha", default=0.6, min=0.0, max=50.0, step=0.01, round=False),
            Float("beta", default=0.6, min=0.0, max=50.0, step=0.01, round=False),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, model: Any, steps: int, alpha: float, beta: float) -> tuple[Tensor]:
        if alpha <= 0 or beta <= 0:
            raise ValueError(f"alpha and beta must be positive, got {alpha} and {beta}")
        return (beta_sampling_sigmas(model_schedule(model), steps, alpha, beta),)


@register_node
class AlignYourStepsScheduler(Node):
    schema = NodeSchema(
        class_type="AlignYourStepsScheduler",
        inputs=(
            Combo("model_type", list(AYS_NOISE_LEVELS), combo_as_options=True),
            Int("steps", default=10, min=1, max=MAX_STEPS, step=None),
            Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, model_type: str, steps: int, denoise: float) -> tuple[Tensor]:
        return (align_your_steps_sigmas(model_type, steps, denoise),)


@register_node
class OptimalStepsScheduler(Node):
    schema = NodeSchema(
        class_type="OptimalStepsScheduler",
        inputs=(
            Combo("model_type", list(OPTIMAL_STEPS_NOISE_LEVELS), combo_as_options=True),
            Int("steps", default=20, min=3, max=1000, step=None),
            Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
        ),
        outputs=SIGMAS,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, model_type: str, steps: int, denoise: float) -> tuple[Tensor]:
        return (optimal_steps_sigmas(model_type, steps, denoise),)
