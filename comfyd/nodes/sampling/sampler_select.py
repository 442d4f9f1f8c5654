"""SAMPLER nodes (ComfyUI category sampling/custom_sampling/samplers): KSamplerSelect picks any
KSampler sampler by name; the Sampler* nodes configure one sampler's options."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import (
    Combo,
    Float,
    InputSpec,
    Int,
    Link,
    Node,
    NodeSchema,
    OutputSpec,
    register_node,
)
from comfyd.nodes.sampling.schedulers import model_schedule
from comfyd.sampling.guiders import SamplerChoice
from comfyd.sampling.samplers import SAMPLER_NAMES
from comfyd.sampling.samplers.sa_solver import tau_interval
from comfyd.sampling.samplers.stochastic import reverse_time_sde_noise_scaler

CATEGORY = "sampling/custom_sampling/samplers"
SAMPLER = (OutputSpec("SAMPLER"),)


def _unbounded(name: str, default: float, max: float = 100.0) -> Any:
    return Float(name, default=default, min=0.0, max=max, step=0.01, round=False)


def _noise_device() -> Any:
    return Combo("noise_device", ["gpu", "cpu"])


def _with_device(name: str, noise_device: str) -> str:
    return name if noise_device == "cpu" else f"{name}_gpu"


@register_node
class KSamplerSelect(Node):
    schema = NodeSchema(
        class_type="KSamplerSelect",
        inputs=(Combo("sampler_name", SAMPLER_NAMES),),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, sampler_name: str) -> tuple[SamplerChoice]:
        if sampler_name not in SAMPLER_NAMES:
            raise ValueError(f"unknown sampler {sampler_name!r}")
        return (SamplerChoice(sampler_name),)


@register_node
class SamplerEulerAncestral(Node):
    schema = NodeSchema(
        class_type="SamplerEulerAncestral",
        inputs=(_unbounded("eta", 1.0), _unbounded("s_noise", 1.0)),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, eta: float, s_noise: float) -> tuple[SamplerChoice]:
        return (SamplerChoice("euler_ancestral", {"eta": eta, "s_noise": s_noise}),)


@register_node
class SamplerEulerAncestralCFGPP(Node):
    schema = NodeSchema(
        class_type="SamplerEulerAncestralCFGPP",
        display_name="SamplerEulerAncestralCFG++",
        inputs=(_unbounded("eta", 1.0, max=1.0), _unbounded("s_noise", 1.0, max=10.0)),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, eta: float, s_noise: float) -> tuple[SamplerChoice]:
        return (SamplerChoice("euler_ancestral_cfg_pp", {"eta": eta, "s_noise": s_noise}),)


@register_node
class SamplerLMS(Node):
    schema = NodeSchema(
        class_type="SamplerLMS",
        inputs=(Int("order", default=4, min=1, max=100, step=None),),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, order: int) -> tuple[SamplerChoice]:
        return (SamplerChoice("lms", {"order": order}),)


@register_node
class SamplerDPMPP_3M_SDE(Node):
    schema = NodeSchema(
        class_type="SamplerDPMPP_3M_SDE",
        inputs=(_unbounded("eta", 1.0), _unbounded("s_noise", 1.0), _noise_device()),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, eta: float, s_noise: float, noise_device: str) -> tuple[SamplerChoice]:
        return (SamplerChoice(_with_device("dpmpp_3m_sde", noise_device), {"eta": eta, "s_noise": s_noise}),)


@register_node
class SamplerDPMPP_2M_SDE(Node):
    schema = NodeSchema(
        class_type="SamplerDPMPP_2M_SDE",
        inputs=(
            Combo("solver_type", ["midpoint", "heun"]),
            _unbounded("eta", 1.0),
            _unbounded("s_noise", 1.0),
            _noise_device(),
        ),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, solver_type: str, eta: float, s_noise: float, noise_device: str
    ) -> tuple[SamplerChoice]:
        options = {"eta": eta, "s_noise": s_noise, "solver_type": solver_type}
        return (SamplerChoice(_with_device("dpmpp_2m_sde", noise_device), options),)


@register_node
class SamplerDPMPP_SDE(Node):
    schema = NodeSchema(
        class_type="SamplerDPMPP_SDE",
        inputs=(_unbounded("eta", 1.0), _unbounded("s_noise", 1.0), _unbounded("r", 0.5), _noise_device()),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, eta: float, s_noise: float, r: float, noise_device: str
    ) -> tuple[SamplerChoice]:
        if r <= 0:
            raise ValueError("r must be positive")
        options = {"eta": eta, "s_noise": s_noise, "r": r}
        return (SamplerChoice(_with_device("dpmpp_sde", noise_device), options),)


@register_node
class SamplerDPMPP_2S_Ancestral(Node):
    schema = NodeSchema(
        class_type="SamplerDPMPP_2S_Ancestral",
        inputs=(_unbounded("eta", 1.0), _unbounded("s_noise", 1.0)),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, eta: float, s_noise: float) -> tuple[SamplerChoice]:
        return (SamplerChoice("dpmpp_2s_ancestral", {"eta": eta, "s_noise": s_noise}),)


@register_node
class SamplerDPMAdaptative(Node):
    schema = NodeSchema(
        class_type="SamplerDPMAdaptative",
        inputs=(
            Int("order", default=3, min=2, max=3, step=None),
            _unbounded("rtol", 0.05),
            _unbounded("atol", 0.0078),
            _unbounded("h_init", 0.05),
            _unbounded("pcoeff", 0.0),
            _unbounded("icoeff", 1.0),
            _unbounded("dcoeff", 0.0),
            _unbounded("accept_safety", 0.81),
            _unbounded("eta", 0.0),
            _unbounded("s_noise", 1.0),
        ),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, **options: Any) -> tuple[SamplerChoice]:
        if options["h_init"] <= 0:
            raise ValueError("h_init must be positive")
        if options["rtol"] <= 0 and options["atol"] <= 0:
            raise ValueError("rtol or atol must be positive")
        return (SamplerChoice("dpm_adaptive", dict(options)),)


@register_node
class SamplerER_SDE(Node):
    schema = NodeSchema(
        class_type="SamplerER_SDE",
        inputs=(
            Combo("solver_type", ["ER-SDE", "Reverse-time SDE", "ODE"], combo_as_options=True),
            Int("max_stage", default=3, min=1, max=3, step=None),
            _unbounded("eta", 1.0),
            _unbounded("s_noise", 1.0),
        ),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, solver_type: str, max_stage: int, eta: float, s_noise: float
    ) -> tuple[SamplerChoice]:
        if solver_type == "ODE" or (solver_type == "Reverse-time SDE" and eta == 0):
            eta, s_noise = 0.0, 0.0
        scaler = None if solver_type == "ER-SDE" else reverse_time_sde_noise_scaler(eta)
        return (
            SamplerChoice("er_sde", {"s_noise": s_noise, "noise_scaler": scaler, "max_stage": max_stage}),
        )


@register_node
class SamplerSASolver(Node):
    schema = NodeSchema(
        class_type="SamplerSASolver",
        inputs=(
            Link("model", "MODEL"),
            _unbounded("eta", 1.0, max=10.0),
            Float("sde_start_percent", default=0.2, min=0.0, max=1.0, step=0.001),
            Float("sde_end_percent", default=0.8, min=0.0, max=1.0, step=0.001),
            _unbounded("s_noise", 1.0),
            Int("predictor_order", default=3, min=1, max=6, step=None),
            Int("corrector_order", default=4, min=0, max=6, step=None),
            # ComfyUI declares these two without a default.
            InputSpec("use_pece", "BOOLEAN"),
            InputSpec("simple_order_2", "BOOLEAN"),
        ),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(
        self,
        ctx: NodeContext,
        model: Any,
        eta: float,
        sde_start_percent: float,
        sde_end_percent: float,
        s_noise: float,
        predictor_order: int,
        corrector_order: int,
        use_pece: bool,
        simple_order_2: bool,
    ) -> tuple[SamplerChoice]:
        schedule = model_schedule(model)
        tau = tau_interval(
            schedule.percent_to_sigma(sde_start_percent), schedule.percent_to_sigma(sde_end_percent), eta=eta
        )
        options = {
            "tau_func": tau,
            "s_noise": s_noise,
            "predictor_order": predictor_order,
            "corrector_order": corrector_order,
            "use_pece": use_pece,
            "simple_order_2": simple_order_2,
        }
        return (SamplerChoice("sa_solver", options),)


@register_node
class SamplerLCMUpscale(Node):
    schema = NodeSchema(
        class_type="SamplerLCMUpscale",
        inputs=(
            Float("scale_ratio", default=1.0, min=0.1, max=20.0, step=0.01),
            Int("scale_steps", default=-1, min=-1, max=1000, step=1),
            Combo("upscale_method", ["bislerp", "nearest-exact", "bilinear", "area", "bicubic"], combo_as_options=True),
        ),
        outputs=SAMPLER,
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, scale_ratio: float, scale_steps: int, upscale_method: str) -> tuple[SamplerChoice]:
        options = {"total_upscale": scale_ratio, "upscale_method": upscale_method,
                   "upscale_steps": None if scale_steps < 0 else scale_steps}  # fmt: skip
        return (SamplerChoice("lcm_upscale", options),)


@register_node
class SamplerEulerCFGpp(Node):
    schema = NodeSchema(
        class_type="SamplerEulerCFGpp",
        display_name="SamplerEulerCFG++",
        inputs=(Combo("version", ["regular", "alternative"], combo_as_options=True),),
        outputs=SAMPLER,
        category="_for_testing",
    )

    def run(self, ctx: NodeContext, version: str) -> tuple[SamplerChoice]:
        if version == "alternative":
            return (SamplerChoice("euler_cfg_pp_alternative", needs_uncond=True),)
        return (SamplerChoice("euler_cfg_pp"),)
