"""Loaders of model parts kept in files of their own: UNETLoader, CLIPLoader, DualCLIPLoader.

ComfyUI's inputs, choices and category (nodes.py). The files come from `diffusion_models/`
(also `unet/`) and `text_encoders/` (also `clip/`); `models/standalone.py` reads them. CLIP types
comfyd cannot build yet are refused with the list of those it can.
"""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle, ModelHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint

WEIGHT_DTYPES = ["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"]
CLIP_TYPES = [
    "stable_diffusion", "stable_cascade", "sd3", "stable_audio", "mochi", "ltxv", "pixart", "cosmos",
    "lumina2", "wan", "hidream", "chroma", "ace", "omnigen2", "qwen_image", "hunyuan_image",
    "flux2",  # newer ComfyUI's (after 0.3.64), at its place after hunyuan_image
]  # fmt: skip
DUAL_CLIP_TYPES = ["sdxl", "sd3", "flux", "hunyuan_video", "hidream", "hunyuan_image"]
DEVICES = ["default", "cpu"]


@register_node
class UNETLoader(Node):
    schema = NodeSchema(
        class_type="UNETLoader",
        inputs=(Combo("unet_name", _files("unet")), Combo("weight_dtype", WEIGHT_DTYPES)),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "unet", inputs.get("unet_name", ""))

    def run(self, ctx: NodeContext, unet_name: str, weight_dtype: str = "default") -> tuple[ModelHandle]:
        with ctx.loading():
            return (ctx.env.models.load_diffusion_model(unet_name, weight_dtype),)


def _device_input() -> Any:
    return Combo("device", DEVICES, optional=True, extra={"advanced": True})


def _clip_fingerprint(ctx: NodeContext, *names: str) -> Any:
    return tuple(_fingerprint(ctx, "clip", name) for name in names)


@register_node
class CLIPLoader(Node):
    schema = NodeSchema(
        class_type="CLIPLoader",
        inputs=(Combo("clip_name", _files("clip")), Combo("type", CLIP_TYPES), _device_input()),
        outputs=(OutputSpec("CLIP"),),
        category="advanced/loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _clip_fingerprint(ctx, inputs.get("clip_name", ""))

    def run(
        self, ctx: NodeContext, clip_name: str, type: str = "stable_diffusion", device: str = "default"
    ) -> tuple[ClipHandle]:
        with ctx.loading():
            return (ctx.env.models.load_clip([clip_name], type),)


@register_node
class DualCLIPLoader(Node):
    schema = NodeSchema(
        class_type="DualCLIPLoader",
        inputs=(
            Combo("clip_name1", _files("clip")),
            Combo("clip_name2", _files("clip")),
            Combo("type", DUAL_CLIP_TYPES),
            _device_input(),
        ),
        outputs=(OutputSpec("CLIP"),),
        category="advanced/loaders",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _clip_fingerprint(ctx, inputs.get("clip_name1", ""), inputs.get("clip_name2", ""))

    def run(
        self, ctx: NodeContext, clip_name1: str, clip_name2: str, type: str, device: str = "default"
    ) -> tuple[ClipHandle]:
        with ctx.loading():
            return (ctx.env.models.load_clip([clip_name1, clip_name2], type),)
