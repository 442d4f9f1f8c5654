"""Loaders of image-prompt models: CLIPVisionLoader (`clip_vision/`) and StyleModelLoader
(`style_models/`), declared as ComfyUI's nodes.py declares them."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.clip_vision import ClipVisionHandle
from comfyd.models.style_model import StyleModelHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint


@register_node
class CLIPVisionLoader(Node):
    schema = NodeSchema(
        class_type="CLIPVisionLoader",
        inputs=(Combo("clip_name", _files("clip_vision")),),
        outputs=(OutputSpec("CLIP_VISION"),),
        category="loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "clip_vision", inputs.get("clip_name", ""))

    def run(self, ctx: NodeContext, clip_name: str) -> tuple[ClipVisionHandle]:
        with ctx.loading():
            return (ctx.env.models.load_clip_vision(clip_name),)


@register_node
class StyleModelLoader(Node):
    schema = NodeSchema(
        class_type="StyleModelLoader",
        inputs=(Combo("style_model_name", _files("style_models")),),
        outputs=(OutputSpec("STYLE_MODEL"),),
        category="loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "style_models", inputs.get("style_model_name", ""))

    def run(self, ctx: NodeContext, style_model_name: str) -> tuple[StyleModelHandle]:
        with ctx.loading():
            return (ctx.env.models.load_style_model(style_model_name),)
