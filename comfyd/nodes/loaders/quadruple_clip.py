"""QuadrupleCLIPLoader: four text-encoder files from `text_encoders/` (also `clip/`) as one CLIP.
ComfyUI 0.3.64 (comfy_extras/nodes_hidream.py) always builds HiDream's CLIP from them (CLIP-L,
CLIP-G, T5-XXL and Llama-3.1-8B, in any order); `models/standalone.py` says which file is which."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint

# ComfyUI's type name for the CLIP this loader builds (its only recipe).
QUADRUPLE_CLIP_TYPE = "hidream"
SLOTS = (1, 2, 3, 4)


@register_node
class QuadrupleCLIPLoader(Node):
    schema = NodeSchema(
        class_type="QuadrupleCLIPLoader",
        inputs=tuple(Combo(f"clip_name{i}", _files("clip"), combo_as_options=True) for i in SLOTS),
        outputs=(OutputSpec("CLIP"),),
        category="advanced/loaders",
        description="[Recipes]\n\nhidream: long clip-l, long clip-g, t5xxl, llama_8b_3.1_instruct",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return tuple(_fingerprint(ctx, "clip", inputs.get(f"clip_name{i}", "")) for i in SLOTS)

    def run(
        self, ctx: NodeContext, clip_name1: str, clip_name2: str, clip_name3: str, clip_name4: str
    ) -> tuple[ClipHandle]:
        with ctx.loading():
            names = [clip_name1, clip_name2, clip_name3, clip_name4]
            return (ctx.env.models.load_clip(names, QUADRUPLE_CLIP_TYPE),)
