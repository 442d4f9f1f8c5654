"""CLIPTextEncodeHiDream: separate prompts for the four encoders of a HiDream CLIP
(comfy_extras/nodes_hidream.py). Each encoder the CLIP holds reads its own prompt; CLIP-L and
CLIP-G are not padded to the same number of chunks (only their pooled outputs are used)."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import InputSpec, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models import families
from comfyd.models.families.hidream import FAMILY as HIDREAM
from comfyd.models.handles import ClipHandle
from comfyd.models.interrupts import interruptible
from comfyd.models.text_encoding import conditioning_from_tokens, tokenize_for_encoder
from comfyd.nodes.conditioning.clip_text import _embedding_lookup, _require_clip


def _prompt(name: str) -> InputSpec:
    return InputSpec(name, "STRING", multiline=True, extra={"dynamicPrompts": True})


def hidream_tokens(clip: ClipHandle, prompts: dict[str, str], embeddings: Any = None) -> dict[str, list[Any]]:
    """Encoder name -> its tokens, for the encoders `clip` holds."""
    return {
        key: tokenize_for_encoder(clip, key, prompts[key], embeddings)
        for key in families.get(clip.family).encoder_names
        if key in clip.text_encoders
    }


@register_node
class CLIPTextEncodeHiDream(Node):
    schema = NodeSchema(
        class_type="CLIPTextEncodeHiDream",
        inputs=(Link("clip", "CLIP"), _prompt("clip_l"), _prompt("clip_g"), _prompt("t5xxl"), _prompt("llama")),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning",
    )

    def run(self, ctx: NodeContext, clip: Any, clip_l: str, clip_g: str, t5xxl: str, llama: str) -> tuple[Any]:
        clip = _require_clip(clip)
        if clip.family != HIDREAM.name:
            raise ValueError(
                "CLIPTextEncodeHiDream needs a HiDream CLIP (QuadrupleCLIPLoader, or CLIPLoader / "
                f"DualCLIPLoader with type hidream); got a {clip.family} CLIP"
            )
        prompts = {"l": clip_l, "g": clip_g, "t5xxl": t5xxl, "llama": llama}
        tokens = hidream_tokens(clip, prompts, _embedding_lookup(ctx))
        with interruptible(ctx.check_interrupted):
            return (conditioning_from_tokens(clip, tokens),)
