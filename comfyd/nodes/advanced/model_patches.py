"""Model patches of ComfyUI's `advanced/model` and `model_patches/unet` categories:
ModelSamplingDiscrete, RescaleCFG, FreeU and FreeU_V2.

Each returns a new MODEL handle; the loaded weights are shared and never changed outside a
sampling run (see comfyd.models.handles).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Combo, Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import ModelHandle
from comfyd.models.unet_hooks import FreeUPatch
from comfyd.sampling.guidance import RescaleCfg

# ModelSamplingDiscrete's choices and the prediction each selects.
SAMPLING_CHOICES = {"eps": "eps", "v_prediction": "v", "lcm": "lcm", "x0": "x0", "img_to_img": "img_to_img"}


def model_handle(model: Any, node: str) -> ModelHandle:
    if not isinstance(model, ModelHandle):
        raise ValueError(f"{node} patches a diffusion model loaded by comfyd, got {type(model).__name__}")
    return model


@register_node
class ModelSamplingDiscrete(Node):
    schema = NodeSchema(
        class_type="ModelSamplingDiscrete",
        inputs=(
            Link("model", "MODEL"),
            Combo("sampling", list(SAMPLING_CHOICES)),
            Boolean("zsnr", default=False),
        ),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/model",
    )

    def run(self, ctx: NodeContext, model: Any, sampling: str, zsnr: bool) -> tuple[ModelHandle]:
        handle = model_handle(model, "ModelSamplingDiscrete")
        if sampling not in SAMPLING_CHOICES:
            raise ValueError(f"sampling must be one of {', '.join(SAMPLING_CHOICES)}, got {sampling!r}")
        # The family's beta schedule stays; the prediction type and the zsnr rescaling change.
        return (replace(handle, prediction=SAMPLING_CHOICES[sampling], zsnr=bool(zsnr)),)


@register_node
class RescaleCFG(Node):
    schema = NodeSchema(
        class_type="RescaleCFG",
        inputs=(Link("model", "MODEL"), Float("multiplier", default=0.7, min=0.0, max=1.0, step=0.01)),
        outputs=(OutputSpec("MODEL"),),
        category="advanced/model",
    )

    def run(self, ctx: NodeContext, model: Any, multiplier: float) -> tuple[ModelHandle]:
        handle = model_handle(model, "RescaleCFG")
        return (replace(handle, guidance=handle.guidance.with_cfg_function(RescaleCfg(float(multiplier)))),)


def _freeu_inputs(b1: float, b2: float) -> tuple[Any, ...]:
    return (
        Link("model", "MODEL"),
        Float("b1", default=b1, min=0.0, max=10.0, step=0.01),
        Float("b2", default=b2, min=0.0, max=10.0, step=0.01),
        Float("s1", default=0.9, min=0.0, max=10.0, step=0.01),
        Float("s2", default=0.2, min=0.0, max=10.0, step=0.01),
    )


@register_node
class FreeU(Node):
    schema = NodeSchema(
        class_type="FreeU",
        inputs=_freeu_inputs(1.1, 1.2),
        outputs=(OutputSpec("MODEL"),),
        category="model_patches/unet",
    )
    version = 1

    def run(self, ctx: NodeContext, model: Any, b1: float, b2: float, s1: float, s2: float) -> tuple[ModelHandle]:
        handle = model_handle(model, self.schema.class_type)
        return (handle.with_unet_hook(FreeUPatch(self.version, float(b1), float(b2), float(s1), float(s2))),)


@register_node
class FreeU_V2(FreeU):
    schema = NodeSchema(
        class_type="FreeU_V2",
        inputs=_freeu_inputs(1.3, 1.4),
        outputs=(OutputSpec("MODEL"),),
        category="model_patches/unet",
    )
    version = 2
