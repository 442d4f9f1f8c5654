"""CLIPTextEncodeSD3: separate prompts for CLIP-L, CLIP-G and T5-XXL of an SD3 CLIP, with
ComfyUI's `empty_padding` (comfy_extras/nodes_sd3.py): with "none" an empty prompt gives its
encoder no tokens at all (an encoder left out, T5 the end token alone); CLIP-L and CLIP-G are
extended with empty-prompt chunks to the same number of chunks."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, InputSpec, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models import families
from comfyd.models.handles import ClipHandle
from comfyd.models.interrupts import interruptible
from comfyd.models.text_encoding import conditioning_from_tokens, tokenize_for_encoder
from comfyd.nodes.conditioning.clip_text import _embedding_lookup, _require_clip

SD3_ENCODERS = ("l", "g", "t5xxl")
EMPTY_PADDING = ["none", "empty_prompt"]


def _prompt(name: str) -> InputSpec:
    return InputSpec(name, "STRING", multiline=True, extra={"dynamicPrompts": True})


def sd3_tokens(
    clip: ClipHandle, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str, embeddings: Any = None
) -> dict[str, list[Any]]:
    """The chunks each encoder gets (see the module docstring)."""
    if empty_padding not in EMPTY_PADDING:
        raise ValueError(f"empty_padding must be one of {EMPTY_PADDING}, got {empty_padding!r}")
    no_padding = empty_padding == "none"

    def tokens(key: str, text: str) -> list[Any]:
        if text == "" and no_padding:
            return []
        return tokenize_for_encoder(clip, key, text, embeddings)

    out = {"l": tokens("l", clip_l), "g": tokens("g", clip_g), "t5xxl": tokens("t5xxl", t5xxl)}
    while len(out["l"]) < len(out["g"]):
        out["l"].extend(tokenize_for_encoder(clip, "l", "", embeddings))
    while len(out["g"]) < len(out["l"]):
        out["g"].extend(tokenize_for_encoder(clip, "g", "", embeddings))
    return {key: chunks for key, chunks in out.items() if key in clip.text_encoders}


@register_node
class CLIPTextEncodeSD3(Node):
    schema = NodeSchema(
        class_type="CLIPTextEncodeSD3",
        inputs=(
            Link("clip", "CLIP"),
            _prompt("clip_l"),
            _prompt("clip_g"),
            _prompt("t5xxl"),
            Combo("empty_padding", EMPTY_PADDING, combo_as_options=True),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning",
    )

    def run(
        self, ctx: NodeContext, clip: Any, clip_l: str, clip_g: str, t5xxl: str, empty_padding: str
    ) -> tuple[Any]:
        clip = _require_clip(clip)
        if families.get(clip.family).encoder_names != SD3_ENCODERS:
            raise ValueError(
                "CLIPTextEncodeSD3 needs an SD3 CLIP (TripleCLIPLoader, a CLIP loader with type sd3, "
                f"or an SD3 checkpoint); got a {clip.family} CLIP"
            )
        tokens = sd3_tokens(clip, clip_l, clip_g, t5xxl, empty_padding, _embedding_lookup(ctx))
        with interruptible(ctx.check_interrupted):
            return (conditioning_from_tokens(clip, tokens),)
