"""SkipLayerGuidanceDiT and SkipLayerGuidanceDiTSimple (comfy_extras/nodes_slg.py) on the DiT
families whose blocks ComfyUI lets a patch replace and comfyd's network can skip: SD3 / SD3.5
(joint blocks are its double blocks; it has no single blocks, so `single_layers` changes
nothing there, as in ComfyUI), Flux and Chroma (double and single blocks).

DiT: another positive prediction with the blocks skipped, pushed away from after CFG while sigma
lies between the percents. Simple: the negative prediction itself is made with the blocks
skipped (comfyd.sampling.skip_layer_guidance)."""

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
from comfyd.sampling.skip_layer_guidance import SkipLayerGuidance, SkipLayerUncond


def _layers(name: str) -> InputSpec:
    return InputSpec(name, "STRING", default="7, 8, 9", extra={"multiline": False})


def _indices(text: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", str(text)))


def _check_skippable(handle: ModelHandle, node: str) -> None:
    forward = getattr(handle.unet, "forward", None)
    takes = forward is not None and {"skip_layers", "skip_single_layers"} <= set(
        inspect.signature(forward).parameters
    )
    if not takes:
        raise ValueError(
            f"{node} is not supported on {handle.family} models yet (SD3 / SD3.5, Flux and Chroma only)"
        )


_DESCRIPTION = "Generic version of SkipLayerGuidance node that can be used on every DiT model."


@register_node
class SkipLayerGuidanceDiT(Node):
    schema = NodeSchema(
        class_type="SkipLayerGuidanceDiT",
        inputs=(
            Link("model", "MODEL"),
            _layers("double_layers"),
            _layers("single_layers"),
            Float("scale", default=3.0, min=0.0, max=10.0, step=0.1),
            Float("start_percent", default=0.01, min=0.0, max=1.0, step=0.001),
            Float("end_percent", default=0.15, min=0.0, max=1.0, step=0.001),
            Float("rescaling_scale", default=0.0, min=0.0, max=10.0, step=0.01),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/guidance",
        description=_DESCRIPTION,
    )

    def run(
        self,
        ctx: NodeContext,
        model: Any,
        double_layers: str,
        single_layers: str,
        scale: float,
        start_percent: float,
        end_percent: float,
        rescaling_scale: float = 0.0,
    ) -> tuple[ModelHandle]:
        handle = model_handle(model, "SkipLayerGuidanceDiT")
        double, single = _indices(double_layers), _indices(single_layers)
        if not double and not single:
            return (handle,)
        _check_skippable(handle, "SkipLayerGuidanceDiT")
        schedule = model_schedule(handle)
        patch = SkipLayerGuidance(
            double, float(scale), schedule.percent_to_sigma(start_percent), schedule.percent_to_sigma(end_percent),
            single, float(rescaling_scale),
        )  # fmt: skip
        return (replace(handle, guidance=handle.guidance.with_post_cfg(patch)),)


@register_node
class SkipLayerGuidanceDiTSimple(Node):
    schema = NodeSchema(
        class_type="SkipLayerGuidanceDiTSimple",
        inputs=(
            Link("model", "MODEL"),
            _layers("double_layers"),
            _layers("single_layers"),
            Float("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
            Float("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/guidance",
        description="Simple version of the SkipLayerGuidanceDiT node that only modifies the uncond pass.",
    )

    def run(
        self, ctx: NodeContext, model: Any, double_layers: str, single_layers: str, start_percent: float,
        end_percent: float,
    ) -> tuple[ModelHandle]:  # fmt: skip
        handle = model_handle(model, "SkipLayerGuidanceDiTSimple")
        double, single = _indices(double_layers), _indices(single_layers)
        if not double and not single:
            return (handle,)
        _check_skippable(handle, "SkipLayerGuidanceDiTSimple")
        schedule = model_schedule(handle)
        patch = SkipLayerUncond(
            double, schedule.percent_to_sigma(start_percent), schedule.percent_to_sigma(end_percent), single
        )
        return (replace(handle, guidance=handle.guidance.with_cond_batch(patch)),)
