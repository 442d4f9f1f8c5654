"""ModelSamplingLTXV: an LTX-Video MODEL whose flow schedule is ModelSamplingFlux's at a shift
linear in the latent's token count (comfy_extras/nodes_lt.py; 4096 tokens without a latent),
CONST prediction. The shift is LTXVScheduler's (nodes/sampling/ltxv_scheduler.py)."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.nodes.sampling.ltxv_scheduler import latent_tokens, token_shift
from comfyd.sampling.flow import CleanInpaintSampling, ExpTimeShiftSchedule


@register_node
class ModelSamplingLTXV(Node):
    schema = NodeSchema(
        class_type="ModelSamplingLTXV",
        inputs=(
            Link("model", "MODEL"),
            Float("max_shift", default=2.05, min=0.0, max=100.0, step=0.01),
            Float("base_shift", default=0.95, min=0.0, max=100.0, step=0.01),
            Link("latent", "LATENT", optional=True),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/model",
    )

    def run(
        self, ctx: NodeContext, model: ModelHandle, max_shift: float, base_shift: float, latent: Any = None
    ) -> tuple[ModelHandle]:
        if not isinstance(model, ModelHandle):
            raise ValueError("model must be a MODEL")
        shift = token_shift(latent_tokens(latent), max_shift, base_shift)
        return (model.with_sampling(CleanInpaintSampling(ExpTimeShiftSchedule(shift=shift))),)
