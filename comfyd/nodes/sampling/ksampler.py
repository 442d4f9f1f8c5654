"""KSampler and KSamplerAdvanced (ComfyUI's inputs, names and defaults)."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.previews import LatentPreview
from comfyd.engine.schema import Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.sampling.ksampler import common_ksampler
from comfyd.sampling.samplers import SAMPLER_NAMES
from comfyd.sampling.sigmas import SCHEDULER_NAMES

MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_STEPS = 10000


def _progress(ctx: NodeContext, model: Any):
    latent = getattr(model, "latent_format", None)
    factors = getattr(latent, "rgb_factors", None)

    def report(step: int, total: int, preview: Any) -> None:
        if getattr(preview, "ndim", 0) == 5:
            preview = preview[:, :, 0]  # a video latent previews its first frame
        if factors is not None:
            preview = LatentPreview(preview, factors, latent.rgb_bias)
        ctx.progress(step + 1, total, preview)  # also where an interrupt takes effect

    return report


@register_node
class KSampler(Node):
    schema = NodeSchema(
        class_type="KSampler",
        inputs=(
            Link("model", "MODEL"),
            Int("seed", default=0, min=0, max=MAX_SEED, step=None, control_after_generate=True),
            Int("steps", default=20, min=1, max=MAX_STEPS, step=None),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            Combo("sampler_name", SAMPLER_NAMES),
            Combo("scheduler", SCHEDULER_NAMES),
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("latent_image", "LATENT"),
            Float("denoise", default=1.0, min=0.0, max=1.0, step=0.01),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="sampling",
        description="Denoises a latent with a model, guided by a positive and a negative conditioning.",
    )

    def run(
        self,
        ctx: NodeContext,
        model: Any,
        seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: Any,
        negative: Any,
        latent_image: dict[str, Any],
        denoise: float = 1.0,
    ) -> tuple[dict[str, Any]]:
        latent = common_ksampler(
            model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            denoise=denoise, callback=_progress(ctx, model), interrupt=ctx.interrupt, priority=ctx.priority,
        )  # fmt: skip
        return (latent,)


@register_node
class KSamplerAdvanced(Node):
    schema = NodeSchema(
        class_type="KSamplerAdvanced",
        inputs=(
            Link("model", "MODEL"),
            Combo("add_noise", ["enable", "disable"]),
            Int("noise_seed", default=0, min=0, max=MAX_SEED, step=None, control_after_generate=True),
            Int("steps", default=20, min=1, max=MAX_STEPS, step=None),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            Combo("sampler_name", SAMPLER_NAMES),
            Combo("scheduler", SCHEDULER_NAMES),
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("latent_image", "LATENT"),
            Int("start_at_step", default=0, min=0, max=MAX_STEPS, step=None),
            Int("end_at_step", default=MAX_STEPS, min=0, max=MAX_STEPS, step=None),
            Combo("return_with_leftover_noise", ["disable", "enable"]),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="sampling",
        description="KSampler over a window of steps, optionally without added noise or final denoise.",
    )

    def run(
        self,
        ctx: NodeContext,
        model: Any,
        add_noise: str,
        noise_seed: int,
        steps: int,
        cfg: float,
        sampler_name: str,
        scheduler: str,
        positive: Any,
        negative: Any,
        latent_image: dict[str, Any],
        start_at_step: int,
        end_at_step: int,
        return_with_leftover_noise: str,
    ) -> tuple[dict[str, Any]]:
        latent = common_ksampler(
            model, noise_seed, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
            disable_noise=add_noise == "disable",
            start_step=start_at_step,
            last_step=end_at_step,
            force_full_denoise=return_with_leftover_noise != "enable",
            callback=_progress(ctx, model),
            interrupt=ctx.interrupt,
            priority=ctx.priority,
        )  # fmt: skip
        return (latent,)
