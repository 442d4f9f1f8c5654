"""DifferentialDiffusion: the model reads a soft inpainting mask as a per-cell schedule
(comfyd/sampling/differential_diffusion.py). ComfyUI 0.3.64: comfy_extras/nodes_differential_diffusion.py."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.nodes.advanced.model_patches import model_handle
from comfyd.sampling.differential_diffusion import DifferentialMask


@register_node
class DifferentialDiffusion(Node):
    schema = NodeSchema(
        class_type="DifferentialDiffusion",
        inputs=(
            Link("model", "MODEL"),
            Float("strength", default=1.0, min=0.0, max=1.0, step=0.01, optional=True),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="_for_testing",
        display_name="Differential Diffusion",
    )

    def run(self, ctx: NodeContext, model: Any, strength: float = 1.0) -> tuple[ModelHandle]:
        handle = model_handle(model, "DifferentialDiffusion")
        return (replace(handle, denoise_mask_function=DifferentialMask(float(strength))),)
