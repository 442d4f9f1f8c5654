"""TripleCLIPLoader: three text-encoder files from `text_encoders/` (also `clip/`) as one CLIP.
ComfyUI 0.3.64 (comfy_extras/nodes_sd3.py) always builds SD3's CLIP from them (CLIP-L, CLIP-G and
T5-XXL, in any order); `models/standalone.py` says which file is which."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle
from comfyd.nodes.loaders.checkpoints import _files, _fingerprint

# ComfyUI's type name for the CLIP this loader builds (its only recipe).
TRIPLE_CLIP_TYPE = "sd3"


@register_node
class TripleCLIPLoader(Node):
    schema = NodeSchema(
        class_type="TripleCLIPLoader",
        inputs=tuple(Combo(f"clip_name{i}", _files("clip"), combo_as_options=True) for i in (1, 2, 3)),
        outputs=(OutputSpec("CLIP"),),
        category="advanced/loaders",
        description="[Recipes]\n\nsd3: clip-l, clip-g, t5",
    )

    def fingerprint(self, ctx: NodeContext, **inputs: Any) -> Any:
        return tuple(_fingerprint(ctx, "clip", inputs.get(f"clip_name{i}", "")) for i in (1, 2, 3))

    def run(self, ctx: NodeContext, clip_name1: str, clip_name2: str, clip_name3: str) -> tuple[ClipHandle]:
        with ctx.loading():
            return (ctx.env.models.load_clip([clip_name1, clip_name2, clip_name3], TRIPLE_CLIP_TYPE),)
