"""CFGNorm: a MODEL whose guided prediction is held to the positive prompt's norm
(comfyd.sampling.cfg_norm), as ComfyUI 0.3.64's experimental node of that name."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.nodes.advanced.model_patches import model_handle
from comfyd.sampling.cfg_norm import CfgNorm


@register_node
class CFGNorm(Node):
    schema = NodeSchema(
        class_type="CFGNorm",
        inputs=(Link("model", "MODEL"), Float("strength", default=1.0, min=0.0, max=100.0, step=0.01)),
        outputs=(OutputSpec("MODEL", name="patched_model"),),
        category="advanced/guidance",
    )

    def run(self, ctx: NodeContext, model: Any, strength: float) -> tuple[ModelHandle]:
        handle = model_handle(model, "CFGNorm")
        return (replace(handle, guidance=handle.guidance.with_post_cfg(CfgNorm(float(strength)))),)
