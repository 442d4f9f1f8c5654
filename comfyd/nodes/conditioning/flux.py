"""Flux conditioning: CLIPTextEncodeFlux (separate CLIP-L and T5 prompts, guidance) and
FluxGuidance (sets the guidance strength a guidance-distilled model sees). ComfyUI's
comfy_extras/nodes_flux.py inputs and category."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, InputSpec, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle
from comfyd.models.interrupts import interruptible
from comfyd.models.text_encoding import conditioning_from_tokens, tokenize_for_encoder

CATEGORY = "advanced/conditioning/flux"


def _guidance() -> InputSpec:
    return Float("guidance", default=3.5, min=0.0, max=100.0, step=0.1)


def _prompt(name: str) -> InputSpec:
    return InputSpec(name, "STRING", multiline=True, extra={"dynamicPrompts": True})


def with_guidance(conditioning: Any, guidance: float) -> list[list[Any]]:
    """A copy of CONDITIONING with `guidance` in every entry's options."""
    if not isinstance(conditioning, list):
        raise ValueError("conditioning must be a CONDITIONING list of [tensor, dict] pairs")
    return [[pair[0], {**pair[1], "guidance": float(guidance)}] for pair in conditioning]


@register_node
class CLIPTextEncodeFlux(Node):
    schema = NodeSchema(
        class_type="CLIPTextEncodeFlux",
        inputs=(Link("clip", "CLIP"), _prompt("clip_l"), _prompt("t5xxl"), _guidance()),
        outputs=(OutputSpec("CONDITIONING"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, clip: ClipHandle, clip_l: str, t5xxl: str, guidance: float) -> tuple[Any]:
        if not isinstance(clip, ClipHandle) or set(clip.text_encoders) != {"l", "t5xxl"}:
            raise ValueError("CLIPTextEncodeFlux needs a Flux CLIP (DualCLIPLoader with type flux)")
        tokens = {
            "l": tokenize_for_encoder(clip, "l", clip_l),
            "t5xxl": tokenize_for_encoder(clip, "t5xxl", t5xxl),
        }
        with interruptible(ctx.check_interrupted):
            return (with_guidance(conditioning_from_tokens(clip, tokens), guidance),)


@register_node
class FluxGuidance(Node):
    schema = NodeSchema(
        class_type="FluxGuidance",
        inputs=(Link("conditioning", "CONDITIONING"), _guidance()),
        outputs=(OutputSpec("CONDITIONING"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, conditioning: Any, guidance: float) -> tuple[Any]:
        return (with_guidance(conditioning, guidance),)
