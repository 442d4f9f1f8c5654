"""ControlNetApply, ControlNetApplyAdvanced and SetUnionControlNetType, as ComfyUI's nodes.py
and comfy_extras/nodes_controlnet.py declare and compute them.

Each conditioning entry gets a "control": a new ControlLink holding the hint, strength and
start/end percent, chained to the control the entry already had. Entries that had the same
previous control get the same new link (so the positive and negative prompts share one and
batch together). ControlNetApply marks its entries to lend their control to the negative prompt.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.control_link import ControlLink
from comfyd.models.control_union import UNION_TYPES

UNION_TYPE_CHOICES = ["auto", *UNION_TYPES]


def apply_control(
    conditionings: list[Any],
    control_net: ControlLink,
    image: torch.Tensor,
    strength: float,
    percent_range: tuple[float, float],
    vae: Any = None,
    apply_to_uncond: bool = False,
) -> list[list[list[Any]]]:
    """Each CONDITIONING with `control_net` applied on top of the controls its entries carry."""
    if not isinstance(control_net, ControlLink):
        raise ValueError(f"control_net must be a CONTROL_NET, got {type(control_net).__name__}")
    made: dict[int, ControlLink] = {}
    out = []
    for conditioning in conditionings:
        entries = []
        for tensor, options in conditioning:
            previous = options.get("control")
            link = made.get(id(previous))
            if link is None:
                link = control_net.with_hint(image, strength, percent_range, previous, vae)
                made[id(previous)] = link
            entries.append([tensor, {**options, "control": link, "control_apply_to_uncond": apply_to_uncond}])
        out.append(entries)
    return out


@register_node
class ControlNetApply(Node):
    schema = NodeSchema(
        class_type="ControlNetApply",
        inputs=(
            Link("conditioning", "CONDITIONING"),
            Link("control_net", "CONTROL_NET"),
            Link("image", "IMAGE"),
            Float("strength", default=1.0, min=0.0, max=10.0, step=0.01),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning/controlnet",
        display_name="Apply ControlNet (OLD)",
    )

    def run(
        self, ctx: NodeContext, conditioning: Any, control_net: ControlLink, image: torch.Tensor, strength: float
    ) -> tuple[Any]:
        if strength == 0:
            return (conditioning,)
        (out,) = apply_control([conditioning], control_net, image, strength, (0.0, 1.0), apply_to_uncond=True)
        return (out,)


@register_node
class ControlNetApplyAdvanced(Node):
    schema = NodeSchema(
        class_type="ControlNetApplyAdvanced",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("control_net", "CONTROL_NET"),
            Link("image", "IMAGE"),
            Float("strength", default=1.0, min=0.0, max=10.0, step=0.01),
            Float("start_percent", default=0.0, min=0.0, max=1.0, step=0.001),
            Float("end_percent", default=1.0, min=0.0, max=1.0, step=0.001),
            Link("vae", "VAE", optional=True),
        ),
        outputs=(OutputSpec("CONDITIONING", "positive"), OutputSpec("CONDITIONING", "negative")),
        category="conditioning/controlnet",
        display_name="Apply ControlNet",
    )

    def run(
        self,
        ctx: NodeContext,
        positive: Any,
        negative: Any,
        control_net: ControlLink,
        image: torch.Tensor,
        strength: float,
        start_percent: float,
        end_percent: float,
        vae: Any = None,
    ) -> tuple[Any, Any]:
        if strength == 0:
            return (positive, negative)
        pos, neg = apply_control(
            [positive, negative], control_net, image, strength, (start_percent, end_percent), vae=vae
        )
        return (pos, neg)


@register_node
class SetUnionControlNetType(Node):
    schema = NodeSchema(
        class_type="SetUnionControlNetType",
        inputs=(Link("control_net", "CONTROL_NET"), Combo("type", UNION_TYPE_CHOICES)),
        outputs=(OutputSpec("CONTROL_NET"),),
        category="conditioning/controlnet",
        display_name="SetUnionControlNetType",
    )

    def run(self, ctx: NodeContext, control_net: ControlLink, type: str) -> tuple[ControlLink]:
        if not isinstance(control_net, ControlLink):
            raise ValueError(f"control_net must be a CONTROL_NET, got {control_net.__class__.__name__}")
        index = UNION_TYPES.get(type, -1)
        # "auto" clears the choice; a plain (non-union) ControlNet ignores the argument.
        return (control_net.with_extra_arg("control_type", [index] if index >= 0 else []),)
