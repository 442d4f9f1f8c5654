"""SamplerCustom and SamplerCustomAdvanced (ComfyUI category sampling/custom_sampling): sampling
from parts (a sampler, sigmas, a guider or cfg and prompts, a noise source)."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.sampling.custom import add_noise, sample_custom
from comfyd.sampling.guiders import Guider, NoiseSource

CATEGORY = "sampling/custom_sampling"
MAX_SEED = 0xFFFFFFFFFFFFFFFF
OUTPUTS = (OutputSpec("LATENT", name="output"), OutputSpec("LATENT", name="denoised_output"))


def _progress(ctx: NodeContext):
    def report(step: int, total: int, preview: Any) -> None:
        ctx.progress(min(step + 1, total), total, preview)  # also where an interrupt takes effect

    return report


@register_node
class SamplerCustom(Node):
    schema = NodeSchema(
        class_type="SamplerCustom",
        inputs=(
            Link("model", "MODEL"),
            Boolean("add_noise", default=True),
            Int("noise_seed", default=0, min=0, max=MAX_SEED, step=None, control_after_generate=True),
            Float("cfg", default=8.0, min=0.0, max=100.0, step=0.1, round=0.01),
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("sampler", "SAMPLER"),
            Link("sigmas", "SIGMAS"),
            Link("latent_image", "LATENT"),
        ),
        outputs=OUTPUTS,
        category=CATEGORY,
    )

    def run(
        self,
        ctx: NodeContext,
        model: Any,
        add_noise: bool,
        noise_seed: int,
        cfg: float,
        positive: Any,
        negative: Any,
        sampler: Any,
        sigmas: Any,
        latent_image: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        guider = Guider(model, "cfg", (positive, negative), cfg=cfg)
        noise = NoiseSource(noise_seed, enabled=bool(add_noise))
        return sample_custom(
            guider, sampler, sigmas, noise, latent_image, callback=_progress(ctx), interrupt=ctx.interrupt,
            priority=ctx.priority,
        )


@register_node
class SamplerCustomAdvanced(Node):
    schema = NodeSchema(
        class_type="SamplerCustomAdvanced",
        inputs=(
            Link("noise", "NOISE"),
            Link("guider", "GUIDER"),
            Link("sampler", "SAMPLER"),
            Link("sigmas", "SIGMAS"),
            Link("latent_image", "LATENT"),
        ),
        outputs=OUTPUTS,
        category=CATEGORY,
    )

    def run(
        self,
        ctx: NodeContext,
        noise: Any,
        guider: Any,
        sampler: Any,
        sigmas: Any,
        latent_image: dict[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        return sample_custom(
            guider, sampler, sigmas, noise, latent_image, callback=_progress(ctx), interrupt=ctx.interrupt,
            priority=ctx.priority,
        )


@register_node
class AddNoise(Node):
    schema = NodeSchema(
        class_type="AddNoise",
        inputs=(
            Link("model", "MODEL"),
            Link("noise", "NOISE"),
            Link("sigmas", "SIGMAS"),
            Link("latent_image", "LATENT"),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="_for_testing/custom_sampling/noise",
    )

    def run(self, ctx: NodeContext, model: Any, noise: Any, sigmas: Any, latent_image: dict[str, Any]) -> tuple[dict]:
        return (add_noise(model, noise, sigmas, latent_image),)
