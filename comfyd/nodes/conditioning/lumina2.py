"""CLIPTextEncodeLumina2 (ComfyUI 0.3.64 comfy_extras/nodes_lumina2.py): the user prompt after one
of Lumina Image 2.0's two system prompts, "<system> <Prompt Start> <user>", encoded by the CLIP as
one text (prompt weights parsed, as CLIPTextEncode does)."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, InputSpec, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.interrupts import interruptible
from comfyd.models.text_encoding import encode_text
from comfyd.nodes.conditioning.clip_text import _embedding_lookup, _require_clip

# The system prompts Lumina Image 2.0 was trained with (its release's two choices).
SYSTEM_PROMPTS = {
    "superior": "You are an assistant designed to generate superior images with the superior degree of "
    "image-text alignment based on textual prompts or user prompts.",
    "alignment": "You are an assistant designed to generate high-quality images with the highest degree of "
    "image-text alignment based on textual prompts.",
}


def lumina2_prompt(system_prompt: str, user_prompt: str) -> str:
    if system_prompt not in SYSTEM_PROMPTS:
        raise ValueError(f"system_prompt must be one of {list(SYSTEM_PROMPTS)}, got {system_prompt!r}")
    if not isinstance(user_prompt, str):
        raise TypeError(f"user_prompt must be a string, got {type(user_prompt).__name__}")
    return f"{SYSTEM_PROMPTS[system_prompt]} <Prompt Start> {user_prompt}"


@register_node
class CLIPTextEncodeLumina2(Node):
    schema = NodeSchema(
        class_type="CLIPTextEncodeLumina2",
        inputs=(
            Combo(
                "system_prompt", list(SYSTEM_PROMPTS), combo_as_options=True,
                tooltip="Which of Lumina 2's system prompts goes before the user prompt.",
            ),
            InputSpec(
                "user_prompt", "STRING", multiline=True, tooltip="The text to be encoded.",
                extra={"dynamicPrompts": True},
            ),
            Link("clip", "CLIP", tooltip="The CLIP model used for encoding the text."),
        ),  # fmt: skip
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning",
        display_name="CLIP Text Encode for Lumina2",
        description="Encodes a system prompt and a user prompt with a CLIP model into a conditioning.",
    )

    def run(self, ctx: NodeContext, clip: Any, user_prompt: str, system_prompt: str) -> tuple[Any]:
        clip = _require_clip(clip)
        text = lumina2_prompt(system_prompt, user_prompt)
        with interruptible(ctx.check_interrupted):
            return (encode_text(clip, text, _embedding_lookup(ctx)),)
