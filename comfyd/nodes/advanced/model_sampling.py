"""ModelSamplingFlux, ModelSamplingSD3, ModelSamplingAuraFlow: a MODEL with another flow schedule.

As ComfyUI's comfy_extras/nodes_model_advanced.py: each returns a new MODEL whose model sampling is
CONST prediction on a flow table (comfyd.sampling.flow): Flux's exponential time shift computed
from the image size, or the SD3 time shift with multiplier 1000 (SD3) or 1 (AuraFlow).
"""

from __future__ import annotations

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling, TimeShiftSchedule, flux_shift

CATEGORY = "advanced/model"
MAX_RESOLUTION = 16384


def _shift(name: str, default: float) -> Float:
    return Float(name, default=default, min=0.0, max=100.0, step=0.01)


def _model(model: object) -> ModelHandle:
    if not isinstance(model, ModelHandle):
        raise ValueError("model must be a MODEL")
    return model


@register_node
class ModelSamplingFlux(Node):
    schema = NodeSchema(
        class_type="ModelSamplingFlux",
        inputs=(
            Link("model", "MODEL"),
            _shift("max_shift", 1.15),
            _shift("base_shift", 0.5),
            Int("width", default=1024, min=16, max=MAX_RESOLUTION, step=8),
            Int("height", default=1024, min=16, max=MAX_RESOLUTION, step=8),
        ),
        outputs=(OutputSpec("MODEL"),),
        category=CATEGORY,
    )

    def run(
        self, ctx: NodeContext, model: ModelHandle, max_shift: float, base_shift: float, width: int, height: int
    ) -> tuple[ModelHandle]:
        shift = flux_shift(max_shift, base_shift, width, height)
        return (_model(model).with_sampling(FlowModelSampling(ExpTimeShiftSchedule(shift=shift))),)


@register_node
class ModelSamplingSD3(Node):
    multiplier = 1000.0
    schema = NodeSchema(
        class_type="ModelSamplingSD3",
        inputs=(Link("model", "MODEL"), _shift("shift", 3.0)),
        outputs=(OutputSpec("MODEL"),),
        category=CATEGORY,
    )

    def run(self, ctx: NodeContext, model: ModelHandle, shift: float) -> tuple[ModelHandle]:
        schedule = TimeShiftSchedule(shift=shift, multiplier=self.multiplier)
        return (_model(model).with_sampling(FlowModelSampling(schedule)),)


@register_node
class ModelSamplingAuraFlow(ModelSamplingSD3):
    multiplier = 1.0
    schema = NodeSchema(
        class_type="ModelSamplingAuraFlow",
        inputs=(Link("model", "MODEL"), _shift("shift", 1.73)),
        outputs=(OutputSpec("MODEL"),),
        category=CATEGORY,
    )
