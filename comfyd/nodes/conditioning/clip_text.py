"""Text encoding and conditioning nodes (ComfyUI's nodes.py and comfy_extras/nodes_clip_sdxl.py).

CONDITIONING values are lists of `[cond [B, tokens, dim], options dict]`. Nodes never modify an
input in place: each returns new lists and copied option dicts, so cached upstream outputs stay
intact.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, InputSpec, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.clip_tokens import EmbeddingLookup
from comfyd.models.handles import ClipHandle
from comfyd.models.interrupts import interruptible
from comfyd.models.text_encoding import Conditioning, encode_text, encode_text_sdxl

logger = logging.getLogger(__name__)

MAX_RESOLUTION = 16384
LATENT_FACTOR = 8  # ConditioningSetArea stores its area in latent pixels


def _prompt_input(name: str, tooltip: str | None = None) -> InputSpec:
    return InputSpec(name, "STRING", multiline=True, tooltip=tooltip, extra={"dynamicPrompts": True})


def _size_input(name: str, default: int) -> InputSpec:
    return Int(name, default=default, min=0, max=MAX_RESOLUTION, step=None)


def _embedding_lookup(ctx: NodeContext) -> EmbeddingLookup | None:
    """The model manager's textual-inversion loader, when the environment has one."""
    models = getattr(ctx.env, "models", None)
    return getattr(models, "load_embedding", None)


def _require_clip(clip: Any) -> ClipHandle:
    if clip is None:
        raise RuntimeError(
            "ERROR: clip input is invalid: None\n\nIf the clip is from a checkpoint loader node your "
            "checkpoint does not contain a valid clip or text encoder model."
        )
    if not isinstance(clip, ClipHandle):
        raise TypeError(f"clip input must be a CLIP, got {type(clip).__name__}")
    return clip


def _check_conditioning(value: Any, input_name: str) -> Conditioning:
    """Refuse anything that is not a list of [tensor, dict] pairs, naming the input."""
    if not isinstance(value, list) or not all(
        isinstance(entry, (list, tuple))
        and len(entry) == 2
        and isinstance(entry[0], torch.Tensor)
        and isinstance(entry[1], dict)
        for entry in value
    ):
        raise TypeError(f"{input_name} must be a CONDITIONING (a list of [tensor, dict] pairs)")
    return value


def set_conditioning_values(conditioning: Conditioning, values: dict[str, Any]) -> Conditioning:
    """A copy of `conditioning` with `values` set in every entry's options (node_helpers' helper)."""
    return [[cond, {**options, **values}] for cond, options in conditioning]


@register_node
class CLIPTextEncode(Node):
    schema = NodeSchema(
        class_type="CLIPTextEncode",
        inputs=(
            _prompt_input("text", tooltip="The text to be encoded."),
            Link("clip", "CLIP", tooltip="The CLIP model used for encoding the text."),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning",
        description=(
            "Encodes a text prompt using a CLIP model into an embedding that can be used to guide the "
            "diffusion model towards generating specific images."
        ),
    )

    def run(self, ctx: NodeContext, text: str, clip: ClipHandle) -> tuple[Conditioning]:
        with interruptible(ctx.check_interrupted):
            return (encode_text(_require_clip(clip), text, embeddings=_embedding_lookup(ctx)),)


@register_node
class CLIPTextEncodeSDXL(Node):
    schema = NodeSchema(
        class_type="CLIPTextEncodeSDXL",
        inputs=(
            Link("clip", "CLIP"),
            _size_input("width", 1024),
            _size_input("height", 1024),
            _size_input("crop_w", 0),
            _size_input("crop_h", 0),
            _size_input("target_width", 1024),
            _size_input("target_height", 1024),
            _prompt_input("text_g"),
            _prompt_input("text_l"),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning",
    )

    def run(
        self,
        ctx: NodeContext,
        clip: ClipHandle,
        width: int,
        height: int,
        crop_w: int,
        crop_h: int,
        target_width: int,
        target_height: int,
        text_g: str,
        text_l: str,
    ) -> tuple[Conditioning]:
        with interruptible(ctx.check_interrupted):
            conditioning = encode_text_sdxl(
                _require_clip(clip), text_g, text_l, embeddings=_embedding_lookup(ctx)
            )
        # The sampler turns these into SDXL's size/crop embedding (time_ids).
        size_keys = {
            "width": width,
            "height": height,
            "crop_w": crop_w,
            "crop_h": crop_h,
            "target_width": target_width,
            "target_height": target_height,
        }
        return (set_conditioning_values(conditioning, size_keys),)


@register_node
class ConditioningCombine(Node):
    schema = NodeSchema(
        class_type="ConditioningCombine",
        inputs=(Link("conditioning_1", "CONDITIONING"), Link("conditioning_2", "CONDITIONING")),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning",
    )

    def run(
        self, ctx: NodeContext, conditioning_1: Conditioning, conditioning_2: Conditioning
    ) -> tuple[Conditioning]:
        first = _check_conditioning(conditioning_1, "conditioning_1")
        second = _check_conditioning(conditioning_2, "conditioning_2")
        return (list(first) + list(second),)


@register_node
class ConditioningAverage(Node):
    schema = NodeSchema(
        class_type="ConditioningAverage",
        inputs=(
            Link("conditioning_to", "CONDITIONING"),
            Link("conditioning_from", "CONDITIONING"),
            Float("conditioning_to_strength", default=1.0, min=0.0, max=1.0, step=0.01),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning",
    )

    def run(
        self,
        ctx: NodeContext,
        conditioning_to: Conditioning,
        conditioning_from: Conditioning,
        conditioning_to_strength: float,
    ) -> tuple[Conditioning]:
        targets = _check_conditioning(conditioning_to, "conditioning_to")
        sources = _check_conditioning(conditioning_from, "conditioning_from")
        return (average_conditioning(targets, sources, conditioning_to_strength),)


def average_conditioning(to: Conditioning, source: Conditioning, to_strength: float) -> Conditioning:
    """ComfyUI's ConditioningAverage: to * s + from * (1 - s), `from` cut or zero-padded to length.

    Only the first entry of `source` is used; pooled outputs are blended the same way (or the
    source's is taken when the target has none).
    """
    if not source:
        raise ValueError("conditioning_from is empty")
    if len(source) > 1:
        logger.warning(
            "ConditioningAverage: conditioning_from has %d entries; only the first is applied", len(source)
        )
    cond_from = source[0][0]
    pooled_from = source[0][1].get("pooled_output")
    out: Conditioning = []
    for cond_to, options in to:
        if cond_from.shape[-1] != cond_to.shape[-1]:
            raise ValueError(
                f"ConditioningAverage: conditionings of width {cond_to.shape[-1]} and {cond_from.shape[-1]} "
                "cannot be averaged (different text encoders)"
            )
        blend_from = cond_from[:, : cond_to.shape[1]]
        missing = cond_to.shape[1] - blend_from.shape[1]
        if missing > 0:
            zeros = torch.zeros(
                (blend_from.shape[0], missing, cond_to.shape[2]),
                dtype=blend_from.dtype,
                device=blend_from.device,
            )
            blend_from = torch.cat([blend_from, zeros], dim=1)
        blended = torch.mul(cond_to, to_strength) + torch.mul(blend_from, 1.0 - to_strength)
        new_options = dict(options)
        pooled_to = options.get("pooled_output", pooled_from)
        if pooled_from is not None and pooled_to is not None:
            new_options["pooled_output"] = torch.mul(pooled_to, to_strength) + torch.mul(
                pooled_from, 1.0 - to_strength
            )
        elif pooled_from is not None:
            new_options["pooled_output"] = pooled_from
        out.append([blended, new_options])
    return out


@register_node
class ConditioningConcat(Node):
    schema = NodeSchema(
        class_type="ConditioningConcat",
        inputs=(Link("conditioning_to", "CONDITIONING"), Link("conditioning_from", "CONDITIONING")),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning",
    )

    def run(
        self, ctx: NodeContext, conditioning_to: Conditioning, conditioning_from: Conditioning
    ) -> tuple[Conditioning]:
        targets = _check_conditioning(conditioning_to, "conditioning_to")
        sources = _check_conditioning(conditioning_from, "conditioning_from")
        if not sources:
            raise ValueError("conditioning_from is empty")
        if len(sources) > 1:
            logger.warning(
                "ConditioningConcat: conditioning_from has %d entries; only the first is applied",
                len(sources),
            )
        cond_from = sources[0][0]
        return ([[torch.cat((cond, cond_from), dim=1), dict(options)] for cond, options in targets],)


@register_node
class ConditioningSetArea(Node):
    schema = NodeSchema(
        class_type="ConditioningSetArea",
        inputs=(
            Link("conditioning", "CONDITIONING"),
            Int("width", default=64, min=64, max=MAX_RESOLUTION, step=8),
            Int("height", default=64, min=64, max=MAX_RESOLUTION, step=8),
            Int("x", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Int("y", default=0, min=0, max=MAX_RESOLUTION, step=8),
            Float("strength", default=1.0, min=0.0, max=10.0, step=0.01),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning",
    )

    def run(
        self,
        ctx: NodeContext,
        conditioning: Conditioning,
        width: int,
        height: int,
        x: int,
        y: int,
        strength: float,
    ) -> tuple[Conditioning]:
        entries = _check_conditioning(conditioning, "conditioning")
        # ComfyUI's area tuple: (height, width, y, x) in latent pixels.
        area = (height // LATENT_FACTOR, width // LATENT_FACTOR, y // LATENT_FACTOR, x // LATENT_FACTOR)
        values = {"area": area, "strength": strength, "set_area_to_bounds": False}
        return (set_conditioning_values(entries, values),)


@register_node
class ConditioningSetTimestepRange(Node):
    schema = NodeSchema(
        class_type="ConditioningSetTimestepRange",
        inputs=(
            Link("conditioning", "CONDITIONING"),
            Float("start", default=0.0, min=0.0, max=1.0, step=0.001),
            Float("end", default=1.0, min=0.0, max=1.0, step=0.001),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning",
    )

    def run(
        self, ctx: NodeContext, conditioning: Conditioning, start: float, end: float
    ) -> tuple[Conditioning]:
        entries = _check_conditioning(conditioning, "conditioning")
        return (set_conditioning_values(entries, {"start_percent": start, "end_percent": end}),)


@register_node
class ConditioningZeroOut(Node):
    schema = NodeSchema(
        class_type="ConditioningZeroOut",
        inputs=(Link("conditioning", "CONDITIONING"),),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning",
    )

    def run(self, ctx: NodeContext, conditioning: Conditioning) -> tuple[Conditioning]:
        entries = _check_conditioning(conditioning, "conditioning")
        out: Conditioning = []
        for cond, options in entries:
            new_options = dict(options)
            for key in ("pooled_output", "conditioning_lyrics"):
                if new_options.get(key) is not None:
                    new_options[key] = torch.zeros_like(new_options[key])
            out.append([torch.zeros_like(cond), new_options])
        return (out,)
