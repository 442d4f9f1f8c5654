"""SkipLayerGuidanceSD3 (comfy_extras/nodes_sd3.py; ComfyUI's SkipLayerGuidanceDiT with `layers` as
its double blocks): another positive prediction with some MMDiT blocks skipped, pushed away from
while sigma lies between the start and end percents (comfyd.sampling.skip_layer_guidance)."""

from __future__ import annotations

import inspect
import re
from dataclasses import replace
from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, InputSpec, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.nodes.advanced.model_patches import model_handle
from comfyd.nodes.sampling.schedulers import model_schedule
from comfyd.sampling.skip_layer_guidance import SkipLayerGuidance


def _takes_skip_layers(network: Any) -> bool:
    forward = getattr(network, "forward", None)
    return forward is not None and "skip_layers" in inspect.signature(forward).parameters


@register_node
class SkipLayerGuidanceSD3(Node):
    schema = NodeSchema(
        class_type="SkipLayerGuidanceSD3",
        inputs=(
            Link("model", "MODEL"),
            InputSpec("layers", "STRING", default="7, 8, 9", extra={"multiline": False}),
            Float("scale", default=3.0, min=0.0, max=10.0, step=0.1),
            Float("start_percent", default=0.01, min=0.0, max=1.0, step=0.001),
            Float("end_percent", default=0.15, min=0.0, max=1.0, step=0.001),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/guidance",
        description="Generic version of SkipLayerGuidance node that can be used on every DiT model.",
    )

    def run(
        self, ctx: NodeContext, model: Any, layers: str, scale: float, start_percent: float, end_percent: float
    ) -> tuple[ModelHandle]:
        handle = model_handle(model, "SkipLayerGuidanceSD3")
        blocks = tuple(int(n) for n in re.findall(r"\d+", str(layers)))
        if not blocks:
            return (handle,)
        if not _takes_skip_layers(handle.unet):
            raise ValueError(
                f"SkipLayerGuidanceSD3 is not supported on {handle.family} models yet (SD3 / SD3.5 only)"
            )
        schedule = model_schedule(handle)
        patch = SkipLayerGuidance(
            blocks, float(scale), schedule.percent_to_sigma(start_percent), schedule.percent_to_sigma(end_percent)
        )
        return (replace(handle, guidance=handle.guidance.with_post_cfg(patch)),)
