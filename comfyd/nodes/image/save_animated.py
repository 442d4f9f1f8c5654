"""Animated outputs: SaveAnimatedWEBP, SaveAnimatedPNG.

They save through the same folder, naming and exclusive-write rules as SaveImage, and report
ComfyUI's UI entry, `{"images": [...], "animated": [bool]}`, so the files reach /history, the
websocket, the output store and the prediction responses as SaveImage's do. Metadata is written
where ComfyUI writes it: WEBP in EXIF tags (0x0110 "prompt:{json}", then 0x010f downwards one per
extra_pnginfo key), APNG in private `comf` chunks after the image data (`key\\0json`).
"""

from __future__ import annotations

import io
import json
from typing import Any

import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import (
    Boolean,
    Combo,
    Float,
    Int,
    Link,
    Node,
    NodeOutput,
    NodeSchema,
    String,
    register_node,
)
from comfyd.nodes.image.save_load import (
    _check_images,
    _extra_for_metadata,
    _prompt_for_metadata,
    _to_pil,
    expand_prefix_tokens,
    image_to_uint8,
    next_counter,
    save_target,
    write_exclusive,
)

WEBP_METHODS = {"default": 4, "fastest": 0, "slowest": 6}
_EXIF_PROMPT_TAG = 0x0110  # Model
_EXIF_FIRST_EXTRA_TAG = 0x010F  # Make, then downwards


def _frames(images: torch.Tensor) -> list[Image.Image]:
    return [_to_pil(image_to_uint8(image)) for image in _check_images(images)]


def _frame_duration_ms(fps: float) -> int:
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return int(1000.0 / fps)


def encode_webp(
    frames: list[Image.Image], fps: float, lossless: bool, quality: int, method: str,
    prompt: dict[str, Any] | None, extra_pnginfo: dict[str, Any] | None,
) -> bytes:
    exif = frames[0].getexif()
    if prompt is not None:
        exif[_EXIF_PROMPT_TAG] = f"prompt:{json.dumps(prompt)}"
    if extra_pnginfo is not None:
        for offset, key in enumerate(extra_pnginfo):
            exif[_EXIF_FIRST_EXTRA_TAG - offset] = f"{key}:{json.dumps(extra_pnginfo[key])}"
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="WEBP", save_all=True, duration=_frame_duration_ms(fps), append_images=frames[1:],
        exif=exif, lossless=lossless, quality=quality, method=WEBP_METHODS[method],
    )
    return buffer.getvalue()


def encode_apng(
    frames: list[Image.Image], fps: float, compress_level: int,
    prompt: dict[str, Any] | None, extra_pnginfo: dict[str, Any] | None,
) -> bytes:
    info = PngInfo()
    if prompt is not None:
        info.add(b"comf", b"prompt\0" + json.dumps(prompt).encode("latin-1", "strict"), after_idat=True)
    for key, value in (extra_pnginfo or {}).items():
        info.add(b"comf", key.encode("latin-1", "strict") + b"\0" + json.dumps(value).encode("latin-1", "strict"),
                 after_idat=True)
    buffer = io.BytesIO()
    frames[0].save(
        buffer, format="PNG", pnginfo=info, compress_level=compress_level, save_all=True,
        duration=_frame_duration_ms(fps), append_images=frames[1:],
    )
    return buffer.getvalue()


def _save(ctx: NodeContext, images: torch.Tensor, filename_prefix: str, data: bytes, ext: str) -> dict[str, str]:
    height, width = images.shape[1], images.shape[2]
    target = save_target(ctx.env.output_dir, expand_prefix_tokens(filename_prefix, width, height))
    name, _counter = write_exclusive(target.folder, target.stem, next_counter(target.folder, target.stem), data, ext)
    return {"filename": name, "subfolder": target.subfolder, "type": "output"}


def _animation_inputs() -> tuple[Any, ...]:
    return (
        Link("images", "IMAGE"),
        String("filename_prefix", default="ComfyUI"),
        Float("fps", default=6.0, min=0.01, max=1000.0, step=0.01),
    )


@register_node
class SaveAnimatedWEBP(Node):
    schema = NodeSchema(
        class_type="SaveAnimatedWEBP",
        inputs=(
            *_animation_inputs(),
            Boolean("lossless", default=True),
            Int("quality", default=80, min=0, max=100, step=None),
            Combo("method", list(WEBP_METHODS)),
        ),
        outputs=(),
        category="image/animation",
        output_node=True,
        hidden=("PROMPT", "EXTRA_PNGINFO"),
    )

    def run(
        self, ctx: NodeContext, images: torch.Tensor, filename_prefix: str, fps: float, lossless: bool,
        quality: int, method: str, prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None, **_hidden: Any,
    ) -> NodeOutput:
        frames = _frames(images)
        data = encode_webp(frames, fps, lossless, quality, method, _prompt_for_metadata(ctx, prompt),
                           _extra_for_metadata(ctx, extra_pnginfo))
        entry = _save(ctx, images, filename_prefix, data, "webp")
        # ComfyUI calls a one-frame WEBP not animated.
        return NodeOutput(values=(), ui={"images": [entry], "animated": [len(frames) != 1]})


@register_node
class SaveAnimatedPNG(Node):
    schema = NodeSchema(
        class_type="SaveAnimatedPNG",
        inputs=(*_animation_inputs(), Int("compress_level", default=4, min=0, max=9, step=None)),
        outputs=(),
        category="image/animation",
        output_node=True,
        hidden=("PROMPT", "EXTRA_PNGINFO"),
    )

    def run(
        self, ctx: NodeContext, images: torch.Tensor, fps: float, compress_level: int,
        filename_prefix: str = "ComfyUI", prompt: dict[str, Any] | None = None,
        extra_pnginfo: dict[str, Any] | None = None, **_hidden: Any,
    ) -> NodeOutput:
        frames = _frames(images)
        data = encode_apng(frames, fps, compress_level, _prompt_for_metadata(ctx, prompt),
                           _extra_for_metadata(ctx, extra_pnginfo))
        entry = _save(ctx, images, filename_prefix, data, "png")
        return NodeOutput(values=(), ui={"images": [entry], "animated": [True]})
