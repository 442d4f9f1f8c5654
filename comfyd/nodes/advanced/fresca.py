"""FreSca (comfy_extras/nodes_fresca.py): a MODEL whose guidance is rescaled per frequency band
before CFG (comfyd.sampling.fresca)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.nodes.advanced.model_patches import model_handle
from comfyd.sampling.fresca import FreScaPatch


@register_node
class FreSca(Node):
    schema = NodeSchema(
        class_type="FreSca",
        inputs=(
            Link("model", "MODEL"),
            Float(
                "scale_low",
                default=1.0,
                min=0,
                max=10,
                step=0.01,
                tooltip="Scaling factor for low-frequency components",
            ),
            Float(
                "scale_high",
                default=1.25,
                min=0,
                max=10,
                step=0.01,
                tooltip="Scaling factor for high-frequency components",
            ),
            Int(
                "freq_cutoff",
                default=20,
                min=1,
                max=10000,
                step=1,
                tooltip="Number of frequency indices around center to consider as low-frequency",
            ),
        ),  # fmt: skip
        outputs=(OutputSpec("MODEL"),),
        category="_for_testing",
        description="Applies frequency-dependent scaling to the guidance",
        display_name="FreSca",
    )

    def run(
        self, ctx: NodeContext, model: Any, scale_low: float, scale_high: float, freq_cutoff: int
    ) -> tuple[ModelHandle]:
        handle = model_handle(model, "FreSca")
        patch = FreScaPatch(float(scale_low), float(scale_high), int(freq_cutoff))
        return (replace(handle, guidance=handle.guidance.with_pre_cfg(patch)),)
