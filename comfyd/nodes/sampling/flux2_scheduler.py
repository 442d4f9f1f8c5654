"""Flux2Scheduler: Flux.2's resolution-dependent sigmas (newer ComfyUI's comfy_extras/nodes_flux.py;
not in 0.3.64). Inputs, bounds and category as ComfyUI declares them."""

from __future__ import annotations

from torch import Tensor

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Node, NodeSchema, OutputSpec, register_node
from comfyd.sampling.flux2_sigmas import flux2_sigmas

MAX_RESOLUTION = 16384


@register_node
class Flux2Scheduler(Node):
    schema = NodeSchema(
        class_type="Flux2Scheduler",
        inputs=(
            Int("steps", default=20, min=1, max=4096, step=None),
            Int("width", default=1024, min=16, max=MAX_RESOLUTION, step=1),
            Int("height", default=1024, min=16, max=MAX_RESOLUTION, step=1),
        ),
        outputs=(OutputSpec("SIGMAS"),),
        category="sampling/custom_sampling/schedulers",
    )

    def run(self, ctx: NodeContext, steps: int, width: int, height: int) -> tuple[Tensor]:
        return (flux2_sigmas(steps, width, height),)
