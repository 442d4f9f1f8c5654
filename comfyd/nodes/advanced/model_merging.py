"""Model merging (ComfyUI category `advanced/model_merging`): ModelMergeSimple,
ModelMergeBlocks, ModelMergeAdd, ModelMergeSubtract and CLIPMergeSimple.

A merge is a weight patch on model1 (comfyd.models.handles.MergePatch): applied when model1
samples, with model2's weights as model2's own patches make them, and undone afterwards. Weights
pair by name; one model2 lacks stays model1's, one of another shape is only scaled (ComfyUI's).
"""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ClipHandle, ModelHandle
from comfyd.nodes.advanced.model_patches import model_handle

MERGING = "advanced/model_merging"
# ModelMergeBlocks: a weight's ratio comes from the longest of these prefixes its original-layout
# key starts with; weights none matches take the first block's ratio ("out" also covers
# "output_blocks").
BLOCKS = ("input", "middle", "out")


def _ratio(name: str = "ratio") -> Any:
    return Float(name, default=1.0, min=0.0, max=1.0, step=0.01)


def _models(model1: Any, model2: Any, node: str) -> tuple[ModelHandle, ModelHandle]:
    return model_handle(model1, node), model_handle(model2, node)


@register_node
class ModelMergeSimple(Node):
    schema = NodeSchema(
        class_type="ModelMergeSimple",
        inputs=(Link("model1", "MODEL"), Link("model2", "MODEL"), _ratio()),
        outputs=(OutputSpec("MODEL"),),
        category=MERGING,
    )

    def run(self, ctx: NodeContext, model1: Any, model2: Any, ratio: float) -> tuple[ModelHandle]:
        first, second = _models(model1, model2, "ModelMergeSimple")
        # ComfyUI's ratio weighs model1: ratio * w1 + (1 - ratio) * w2.
        return (first.merged_from(second, 1.0 - ratio, ratio),)


@register_node
class ModelMergeBlocks(Node):
    schema = NodeSchema(
        class_type="ModelMergeBlocks",
        inputs=(Link("model1", "MODEL"), Link("model2", "MODEL"), *(_ratio(block) for block in BLOCKS)),
        outputs=(OutputSpec("MODEL"),),
        category=MERGING,
    )

    def run(
        self, ctx: NodeContext, model1: Any, model2: Any, input: float, middle: float, out: float
    ) -> tuple[ModelHandle]:
        first, second = _models(model1, model2, "ModelMergeBlocks")
        ratios = (("input", float(input)), ("middle", float(middle)), ("out", float(out)))
        return (first.merged_from(second, 0.0, 1.0, block_ratios=ratios, default_ratio=float(input)),)


@register_node
class ModelMergeAdd(Node):
    schema = NodeSchema(
        class_type="ModelMergeAdd",
        inputs=(Link("model1", "MODEL"), Link("model2", "MODEL")),
        outputs=(OutputSpec("MODEL"),),
        category=MERGING,
    )

    def run(self, ctx: NodeContext, model1: Any, model2: Any) -> tuple[ModelHandle]:
        first, second = _models(model1, model2, "ModelMergeAdd")
        return (first.merged_from(second, 1.0, 1.0),)


@register_node
class ModelMergeSubtract(Node):
    schema = NodeSchema(
        class_type="ModelMergeSubtract",
        inputs=(
            Link("model1", "MODEL"),
            Link("model2", "MODEL"),
            Float("multiplier", default=1.0, min=-10.0, max=10.0, step=0.01),
        ),
        outputs=(OutputSpec("MODEL"),),
        category=MERGING,
    )

    def run(self, ctx: NodeContext, model1: Any, model2: Any, multiplier: float) -> tuple[ModelHandle]:
        first, second = _models(model1, model2, "ModelMergeSubtract")
        # ComfyUI 0.3.64 scales model1 by the multiplier too: multiplier * (w1 - w2).
        return (first.merged_from(second, -multiplier, multiplier),)


@register_node
class CLIPMergeSimple(Node):
    schema = NodeSchema(
        class_type="CLIPMergeSimple",
        inputs=(Link("clip1", "CLIP"), Link("clip2", "CLIP"), _ratio()),
        outputs=(OutputSpec("CLIP"),),
        category=MERGING,
    )

    def run(self, ctx: NodeContext, clip1: Any, clip2: Any, ratio: float) -> tuple[ClipHandle]:
        if not isinstance(clip1, ClipHandle) or not isinstance(clip2, ClipHandle):
            raise ValueError("CLIPMergeSimple merges two CLIP models loaded by comfyd")
        return (clip1.merged_from(clip2, 1.0 - ratio, ratio),)
