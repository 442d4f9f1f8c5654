"""RenormCFG: a MODEL whose classifier-free guidance is held to the positive prediction's norm and
switched off above a sigma (comfyd.sampling.renorm_cfg), as ComfyUI 0.3.64's node of that name
for Lumina Image 2.0. It replaces the model's CFG function (the last one set wins, as there)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.nodes.advanced.model_patches import model_handle
from comfyd.sampling.renorm_cfg import RenormCfg


@register_node
class RenormCFG(Node):
    schema = NodeSchema(
        class_type="RenormCFG",
        inputs=(
            Link("model", "MODEL"),
            Float("cfg_trunc", default=100, min=0.0, max=100.0, step=0.01),
            Float("renorm_cfg", default=1.0, min=0.0, max=100.0, step=0.01),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/model",
    )

    def run(self, ctx: NodeContext, model: Any, cfg_trunc: float, renorm_cfg: float) -> tuple[ModelHandle]:
        handle = model_handle(model, "RenormCFG")
        patch = RenormCfg(float(cfg_trunc), float(renorm_cfg))
        return (replace(handle, guidance=handle.guidance.with_cfg_function(patch)),)
