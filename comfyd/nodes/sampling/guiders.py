"""GUIDER and NOISE nodes of custom sampling (ComfyUI categories
sampling/custom_sampling/guiders and sampling/custom_sampling/noise)."""

from __future__ import annotations

from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.sampling.guiders import Guider, NoiseSource

GUIDERS = "sampling/custom_sampling/guiders"
NOISE = "sampling/custom_sampling/noise"
MAX_SEED = 0xFFFFFFFFFFFFFFFF


def _cfg(name: str = "cfg") -> Any:
    return Float(name, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01)


@register_node
class BasicGuider(Node):
    schema = NodeSchema(
        class_type="BasicGuider",
        inputs=(Link("model", "MODEL"), Link("conditioning", "CONDITIONING")),
        outputs=(OutputSpec("GUIDER"),),
        category=GUIDERS,
    )

    def run(self, ctx: NodeContext, model: Any, conditioning: Any) -> tuple[Guider]:
        return (Guider(model, "basic", (conditioning,)),)


@register_node
class CFGGuider(Node):
    schema = NodeSchema(
        class_type="CFGGuider",
        inputs=(
            Link("model", "MODEL"),
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            _cfg(),
        ),
        outputs=(OutputSpec("GUIDER"),),
        category=GUIDERS,
    )

    def run(self, ctx: NodeContext, model: Any, positive: Any, negative: Any, cfg: float) -> tuple[Guider]:
        return (Guider(model, "cfg", (positive, negative), cfg=cfg),)


@register_node
class DualCFGGuider(Node):
    schema = NodeSchema(
        class_type="DualCFGGuider",
        inputs=(
            Link("model", "MODEL"),
            Link("cond1", "CONDITIONING"),
            Link("cond2", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            _cfg("cfg_conds"),
            _cfg("cfg_cond2_negative"),
            Combo("style", ["regular", "nested"]),
        ),
        outputs=(OutputSpec("GUIDER"),),
        category=GUIDERS,
    )

    def run(
        self,
        ctx: NodeContext,
        model: Any,
        cond1: Any,
        cond2: Any,
        negative: Any,
        cfg_conds: float,
        cfg_cond2_negative: float,
        style: str,
    ) -> tuple[Guider]:
        mode = "dual_nested" if style == "nested" else "dual_regular"
        return (Guider(model, mode, (cond1, cond2, negative), cfg=cfg_conds, cfg2=cfg_cond2_negative),)


@register_node
class RandomNoise(Node):
    schema = NodeSchema(
        class_type="RandomNoise",
        inputs=(Int("noise_seed", default=0, min=0, max=MAX_SEED, step=None, control_after_generate=True),),
        outputs=(OutputSpec("NOISE"),),
        category=NOISE,
    )

    def run(self, ctx: NodeContext, noise_seed: int) -> tuple[NoiseSource]:
        return (NoiseSource(noise_seed),)


@register_node
class DisableNoise(Node):
    schema = NodeSchema(
        class_type="DisableNoise",
        outputs=(OutputSpec("NOISE"),),
        category=NOISE,
    )

    def run(self, ctx: NodeContext) -> tuple[NoiseSource]:
        # ComfyUI's empty noise has seed 0, which per-step noise then uses.
        return (NoiseSource(0, enabled=False),)
