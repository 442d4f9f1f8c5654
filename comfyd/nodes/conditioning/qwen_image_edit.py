"""Qwen-Image-Edit's prompt encoders (ComfyUI 0.3.64: comfy_extras/nodes_qwen.py).

TextEncodeQwenImageEdit (Qwen-Image-Edit): the picture is resized ("area") to about 1024x1024
pixels, aspect kept; that picture is what the Qwen2.5-VL vision tower reads (inside the edit
template), and with a VAE its latent is appended to the conditioning's `reference_latents`.

TextEncodeQwenImageEditPlus (Qwen-Image-Edit-2509): up to three pictures, each resized to about
384x384 pixels for the vision tower and, with a VAE, to about 1024x1024 pixels rounded to
multiples of 8 for its reference latent; the prompt gets "Picture i: <vision tokens>" for each
picture in front and the 2509 edit template around it.

Both need a text encoder file that carries the vision tower (`visual.*`) when a picture is given;
without one they refuse clearly (comfyd.models.qwen25_edit.MissingVisionTower).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models import families, qwen25_edit
from comfyd.models.handles import ClipHandle
from comfyd.models.interrupts import interruptible
from comfyd.models.text_encoding import Conditioning
from comfyd.models.vae_codec import vae_encode
from comfyd.nodes.conditioning.clip_text import _prompt_input, _require_clip
from comfyd.nodes.image.transform import common_upscale

REFERENCE_PIXELS = 1024 * 1024
VISION_PIXELS = 384 * 384


def _check_image(image: Any, name: str) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"{name} must be an IMAGE [B, H, W, C]")
    if image.shape[-1] < 3:
        raise ValueError(f"{name} needs at least 3 colour channels, got {image.shape[-1]}")
    return image


def scaled(image: torch.Tensor, pixels: int, multiple: int | None = None) -> torch.Tensor:
    """`image` resized ("area", aspect kept) to about `pixels` pixels; each side rounded to a
    multiple of `multiple` when given (the Plus node's reference size), else to the nearest pixel."""
    height, width = int(image.shape[1]), int(image.shape[2])
    scale = math.sqrt(pixels / (width * height))
    if multiple is None:
        new_width, new_height = round(width * scale), round(height * scale)
    else:
        new_width = round(width * scale / float(multiple)) * multiple
        new_height = round(height * scale / float(multiple)) * multiple
    return common_upscale(image.movedim(-1, 1), new_width, new_height, "area", "disabled").movedim(1, -1)


def _encoder_key(clip: ClipHandle) -> str:
    family = families.get(clip.family)
    for key in family.encoder_names:
        if family.encoder(key).kind == "qwen25_7b":
            return key
    raise ValueError(
        f"the Qwen-Image-Edit text encoders need a Qwen2.5-VL CLIP (CLIPLoader type qwen_image), "
        f"got a {clip.family} CLIP"
    )


def require_vision_tower(clip: ClipHandle) -> None:
    """Refuse a text encoder without the vision tower before any picture work is done."""
    qwen25_edit.vision_tower(clip.text_encoders[_encoder_key(clip)])


def encode_edit_prompt(
    clip: ClipHandle, text: str, images: list[torch.Tensor], template: str | None = None
) -> Conditioning:
    """The conditioning of `text` with `images` read by the vision tower (see qwen25_edit)."""
    key = _encoder_key(clip)
    ids = qwen25_edit.tokenize(clip.tokenizers[key], text, template, with_images=bool(images))
    with torch.no_grad(), clip.patched() as encoders:
        if images and qwen25_edit.IMAGE_PAD in ids:
            qwen25_edit.vision_tower(encoders[key])  # refuse before any work when it is missing
        cond = qwen25_edit.encode(encoders[key], ids, [image[..., :3] for image in images])
    return [[cond, {"pooled_output": None}]]


def with_references(conditioning: Conditioning, latents: list[torch.Tensor]) -> Conditioning:
    if not latents:
        return conditioning
    return [
        [cond, {**options, "reference_latents": [*(options.get("reference_latents") or []), *latents]}]
        for cond, options in conditioning
    ]


_INPUTS_HEAD = (Link("clip", "CLIP"), _prompt_input("prompt"), Link("vae", "VAE", optional=True))


@register_node
class TextEncodeQwenImageEdit(Node):
    schema = NodeSchema(
        class_type="TextEncodeQwenImageEdit",
        inputs=(*_INPUTS_HEAD, Link("image", "IMAGE", optional=True)),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning",
    )

    def run(
        self,
        ctx: NodeContext,
        clip: ClipHandle,
        prompt: str,
        vae: Any = None,
        image: torch.Tensor | None = None,
    ) -> tuple[Conditioning]:
        clip = _require_clip(clip)
        with interruptible(ctx.check_interrupted):
            images: list[torch.Tensor] = []
            latents: list[torch.Tensor] = []
            if image is not None:
                _check_image(image, "image")
                require_vision_tower(clip)
                picture = scaled(image, REFERENCE_PIXELS)[..., :3]
                images.append(picture)
                if vae is not None:
                    latents.append(vae_encode(vae, picture))
            conditioning = encode_edit_prompt(clip, prompt, images)
        return (with_references(conditioning, latents),)


@register_node
class TextEncodeQwenImageEditPlus(Node):
    schema = NodeSchema(
        class_type="TextEncodeQwenImageEditPlus",
        inputs=(*_INPUTS_HEAD, *(Link(f"image{i}", "IMAGE", optional=True) for i in (1, 2, 3))),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning",
    )

    def run(
        self,
        ctx: NodeContext,
        clip: ClipHandle,
        prompt: str,
        vae: Any = None,
        image1: torch.Tensor | None = None,
        image2: torch.Tensor | None = None,
        image3: torch.Tensor | None = None,
    ) -> tuple[Conditioning]:
        clip = _require_clip(clip)
        with interruptible(ctx.check_interrupted):
            images: list[torch.Tensor] = []
            latents: list[torch.Tensor] = []
            pictures = ""
            if any(image is not None for image in (image1, image2, image3)):
                require_vision_tower(clip)
            for index, image in enumerate((image1, image2, image3), start=1):
                if image is None:
                    continue
                image = _check_image(image, f"image{index}")
                images.append(scaled(image, VISION_PIXELS))
                if vae is not None:
                    latents.append(vae_encode(vae, scaled(image, REFERENCE_PIXELS, multiple=8)[..., :3]))
                pictures += f"Picture {index}: {qwen25_edit.VISION_TAG}"
            conditioning = encode_edit_prompt(clip, pictures + prompt, images, qwen25_edit.PLUS_TEMPLATE)
        return (with_references(conditioning, latents),)
