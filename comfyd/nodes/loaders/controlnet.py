"""ControlNetLoader and DiffControlNetLoader: a ControlNet or T2I-Adapter of `controlnet/`
(ComfyUI also lists `t2i_adapter/` there), declared as ComfyUI's nodes.py declares them."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.control_link import ControlLink
from comfyd.models.handles import ModelHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint


@register_node
class ControlNetLoader(Node):
    schema = NodeSchema(
        class_type="ControlNetLoader",
        inputs=(Combo("control_net_name", _files("controlnet")),),
        outputs=(OutputSpec("CONTROL_NET"),),
        category="loaders",
        display_name="Load ControlNet Model",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "controlnet", inputs.get("control_net_name", ""))

    def run(self, ctx: NodeContext, control_net_name: str) -> tuple[ControlLink]:
        with ctx.loading():
            return (ControlLink(ctx.env.models.load_control_model(control_net_name)),)


@register_node
class DiffControlNetLoader(Node):
    schema = NodeSchema(
        class_type="DiffControlNetLoader",
        inputs=(Link("model", "MODEL"), Combo("control_net_name", _files("controlnet"))),
        outputs=(OutputSpec("CONTROL_NET"),),
        category="loaders",
        display_name="Load ControlNet Model (diff)",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "controlnet", inputs.get("control_net_name", ""))

    def run(self, ctx: NodeContext, model: ModelHandle, control_net_name: str) -> tuple[ControlLink]:
        with ctx.loading():
            return (ControlLink(ctx.env.models.load_control_model(control_net_name, model=model)),)
