"""HypernetworkLoader: a hypernetwork of `hypernetworks/` on a MODEL's attention, at a strength.

Declared and computed as ComfyUI's comfy_extras/nodes_hypernetwork.py (comfyd.models.hypernetwork).
"""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint


@register_node
class HypernetworkLoader(Node):
    schema = NodeSchema(
        class_type="HypernetworkLoader",
        inputs=(
            Link("model", "MODEL"),
            Combo("hypernetwork_name", _files("hypernetworks")),
            Float("strength", default=1.0, min=-10.0, max=10.0, step=0.01),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "hypernetworks", inputs.get("hypernetwork_name", ""))

    def run(self, ctx: NodeContext, model: ModelHandle, hypernetwork_name: str, strength: float) -> tuple[ModelHandle]:
        with ctx.loading():
            patch = ctx.env.models.hypernetwork_patch(hypernetwork_name, strength)
        return (model.with_loras(patch) if patch is not None else model,)
