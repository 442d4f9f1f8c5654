"""T5TokenizerOptions: a CLIP whose T5-type tokenizers pad differently (ComfyUI 0.3.64's
experimental node of that name; comfyd.models.tokenizer_options holds the rules)."""

from __future__ import annotations

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle
from comfyd.models.tokenizer_options import t5_option_settings


@register_node
class T5TokenizerOptions(Node):
    schema = NodeSchema(
        class_type="T5TokenizerOptions",
        inputs=(
            Link("clip", "CLIP"),
            Int("min_padding", default=0, min=0, max=10000, step=1),
            Int("min_length", default=0, min=0, max=10000, step=1),
        ),
        outputs=(OutputSpec("CLIP"),),
        category="_for_testing/conditioning",
    )

    def run(self, ctx: NodeContext, clip: ClipHandle, min_padding: int, min_length: int) -> tuple[ClipHandle]:
        return (clip.with_tokenizer_options(t5_option_settings(min_padding, min_length)),)
