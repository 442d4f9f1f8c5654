"""The ComfyUI-GGUF pack's loaders, built in: UnetLoaderGGUF, UnetLoaderGGUFAdvanced, CLIPLoaderGGUF,
DualCLIPLoaderGGUF, TripleCLIPLoaderGGUF and QuadrupleCLIPLoaderGGUF, with the pack's names,
inputs, titles and category ("bootleg"), so workflows that use them run unchanged.

The files are the pack's: `.gguf` diffusion models in `unet/` (`diffusion_models/`), listed as its
`unet_gguf` folder, and text encoders in `clip/` (`text_encoders/`), `.gguf` or not. comfyd's
ordinary loaders read them: block-quantized Linear / Embedding weights stay quantized on the
device and are dequantized in each forward (`models/gguf_layers.py`), the rest is loaded as
UNETLoader / CLIPLoader would load it. UnetLoaderGGUFAdvanced's dtypes and `patch_on_device` tune
the pack's own dequantization; comfyd always dequantizes to float32 and then the compute dtype
(the values the load-time path holds), so they are accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext, NodeEnvironment
from comfyd.engine.schema import Boolean, Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle, ModelHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint
from comfyd.nodes.loaders.split_loaders import CLIP_TYPES, DUAL_CLIP_TYPES

CATEGORY = "bootleg"
DTYPES = ["default", "target", "float32", "float16", "bfloat16"]


def _clip_files(env: NodeEnvironment) -> list[str]:
    """The pack's text-encoder list: the `clip` folder's model files and its `.gguf` files."""
    models = getattr(env, "models", None)
    if models is None:
        return []
    return sorted({*models.list_files("clip"), *models.list_files("clip_gguf")})


def _clip_inputs(count: int) -> tuple[Any, ...]:
    if count == 1:
        return (Combo("clip_name", _clip_files),)
    return tuple(Combo(f"clip_name{i}", _clip_files) for i in range(1, count + 1))


class _UnetLoader(Node):
    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return _fingerprint(ctx, "unet", inputs.get("unet_name", ""))

    def run(self, ctx: NodeContext, unet_name: str, **_tuning: Any) -> tuple[ModelHandle]:
        with ctx.loading():
            return (ctx.env.models.load_diffusion_model(unet_name),)


@register_node
class UnetLoaderGGUF(_UnetLoader):
    schema = NodeSchema(
        class_type="UnetLoaderGGUF",
        inputs=(Combo("unet_name", _files("unet_gguf")),),
        outputs=(OutputSpec("MODEL"),),
        category=CATEGORY,
        display_name="Unet Loader (GGUF)",
    )


@register_node
class UnetLoaderGGUFAdvanced(_UnetLoader):
    schema = NodeSchema(
        class_type="UnetLoaderGGUFAdvanced",
        inputs=(
            Combo("unet_name", _files("unet_gguf")),
            Combo("dequant_dtype", DTYPES, default="default"),
            Combo("patch_dtype", DTYPES, default="default"),
            Boolean("patch_on_device", default=False),
        ),
        outputs=(OutputSpec("MODEL"),),
        category=CATEGORY,
        display_name="Unet Loader (GGUF/Advanced)",
    )


class _ClipLoader(Node):
    clip_type = "stable_diffusion"  # the type a loader without a `type` input builds

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        names = [v for k, v in sorted(inputs.items()) if k.startswith("clip_name")]
        return tuple(_fingerprint(ctx, "clip", name) for name in names)

    def run(self, ctx: NodeContext, **inputs: Any) -> tuple[ClipHandle]:
        names = [inputs[k] for k in sorted(inputs) if k.startswith("clip_name")]
        with ctx.loading():
            return (ctx.env.models.load_clip(names, inputs.get("type", self.clip_type)),)


@register_node
class CLIPLoaderGGUF(_ClipLoader):
    schema = NodeSchema(
        class_type="CLIPLoaderGGUF",
        inputs=(*_clip_inputs(1), Combo("type", CLIP_TYPES)),
        outputs=(OutputSpec("CLIP"),),
        category=CATEGORY,
        display_name="CLIPLoader (GGUF)",
    )


@register_node
class DualCLIPLoaderGGUF(_ClipLoader):
    schema = NodeSchema(
        class_type="DualCLIPLoaderGGUF",
        inputs=(*_clip_inputs(2), Combo("type", DUAL_CLIP_TYPES)),
        outputs=(OutputSpec("CLIP"),),
        category=CATEGORY,
        display_name="DualCLIPLoader (GGUF)",
    )


@register_node
class TripleCLIPLoaderGGUF(_ClipLoader):
    clip_type = "sd3"
    schema = NodeSchema(
        class_type="TripleCLIPLoaderGGUF",
        inputs=_clip_inputs(3),
        outputs=(OutputSpec("CLIP"),),
        category=CATEGORY,
        display_name="TripleCLIPLoader (GGUF)",
    )


@register_node
class QuadrupleCLIPLoaderGGUF(_ClipLoader):
    clip_type = "hidream"
    schema = NodeSchema(
        class_type="QuadrupleCLIPLoaderGGUF",
        inputs=_clip_inputs(4),
        outputs=(OutputSpec("CLIP"),),
        category=CATEGORY,
        display_name="QuadrupleCLIPLoader (GGUF)",
    )
