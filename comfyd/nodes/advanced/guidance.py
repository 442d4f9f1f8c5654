"""Guidance patches of ComfyUI's `_for_testing` category: PerpNeg (its deprecated model-patch
form; the guider form is PerpNegGuider) and SelfAttentionGuidance."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.attention_capture import SelfAttentionCapture, middle_self_attention
from comfyd.models.handles import ModelHandle
from comfyd.nodes.advanced.model_patches import model_handle
from comfyd.sampling.guidance import PerpNegCfg
from comfyd.sampling.self_attention_guidance import AttentionRecord, SelfAttentionGuidancePatch


@register_node
class PerpNeg(Node):
    schema = NodeSchema(
        class_type="PerpNeg",
        display_name="Perp-Neg (DEPRECATED by PerpNegGuider)",
        inputs=(
            Link("model", "MODEL"),
            Link("empty_conditioning", "CONDITIONING"),
            Float("neg_scale", default=1.0, min=0.0, max=100.0, step=0.01),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="_for_testing",
    )

    def run(self, ctx: NodeContext, model: Any, empty_conditioning: Any, neg_scale: float) -> tuple[ModelHandle]:
        handle = model_handle(model, "PerpNeg")
        if not isinstance(empty_conditioning, list) or not empty_conditioning:
            raise ValueError("PerpNeg.empty_conditioning must be a CONDITIONING (an encoded empty prompt)")
        patch = PerpNegCfg(empty_conditioning, float(neg_scale))
        return (replace(handle, guidance=handle.guidance.with_cfg_function(patch)),)


@register_node
class SelfAttentionGuidance(Node):
    schema = NodeSchema(
        class_type="SelfAttentionGuidance",
        display_name="Self-Attention Guidance",
        inputs=(
            Link("model", "MODEL"),
            Float("scale", default=0.5, min=-2.0, max=5.0, step=0.01),
            Float("blur_sigma", default=2.0, min=0.0, max=10.0, step=0.1),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="_for_testing",
    )

    def run(self, ctx: NodeContext, model: Any, scale: float, blur_sigma: float) -> tuple[ModelHandle]:
        handle = model_handle(model, "SelfAttentionGuidance")
        middle_self_attention(handle.unet)  # fails here, with a message, for a UNet without one
        # The capture (model side) and the guidance math (sampling side) share one record.
        record = AttentionRecord()
        patch = SelfAttentionGuidancePatch(float(scale), float(blur_sigma), record)
        patched = replace(handle, guidance=handle.guidance.with_post_cfg(patch, disable_cfg1_optimization=True))
        return (patched.with_unet_hook(SelfAttentionCapture(record)),)
