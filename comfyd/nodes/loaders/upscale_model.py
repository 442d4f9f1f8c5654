"""UpscaleModelLoader: an ESRGAN/RealESRGAN/SwinIR/... file of `upscale_models/`, read by spandrel.

Declared as ComfyUI's comfy_extras/nodes_upscale_model.py declares it.
"""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.upscale import UpscaleModelHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint


@register_node
class UpscaleModelLoader(Node):
    schema = NodeSchema(
        class_type="UpscaleModelLoader",
        inputs=(Combo("model_name", _files("upscale_models"), combo_as_options=True),),
        outputs=(OutputSpec("UPSCALE_MODEL"),),
        category="loaders",
        display_name="Load Upscale Model",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "upscale_models", inputs.get("model_name", ""))

    def run(self, ctx: NodeContext, model_name: str) -> tuple[UpscaleModelHandle]:
        with ctx.loading():
            return (ctx.env.models.load_upscale_model(model_name),)
