"""Edit-model references: ReferenceLatent (appends a latent to the conditioning's
`reference_latents`), FluxKontextImageScale (resizes a picture to the Kontext resolution nearest
its aspect) and FluxKontextMultiReferenceLatentMethod (how several references are laid out).
ComfyUI 0.3.64: comfy_extras/nodes_edit_model.py and nodes_flux.py. A Flux transformer reads
the references as extra tokens (comfyd/models/families/_flux_inputs.py); other models ignore them.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.text_encoding import Conditioning
from comfyd.nodes.conditioning.clip_text import _check_conditioning, set_conditioning_values
from comfyd.nodes.image.transform import common_upscale

# (width, height) pairs Kontext was trained at, as ComfyUI lists them.
KONTEXT_RESOLUTIONS = (
    (672, 1568), (688, 1504), (720, 1456), (752, 1392), (800, 1328), (832, 1248), (880, 1184),
    (944, 1104), (1024, 1024), (1104, 944), (1184, 880), (1248, 832), (1328, 800), (1392, 752),
    (1456, 720), (1504, 688), (1568, 672),
)  # fmt: skip
REFERENCE_METHODS = ["offset", "index", "uxo/uno"]


def append_reference(conditioning: Conditioning, samples: torch.Tensor) -> Conditioning:
    """A copy of `conditioning` with `samples` appended to every entry's reference_latents."""
    return [
        [cond, {**options, "reference_latents": [*(options.get("reference_latents") or []), samples]}]
        for cond, options in conditioning
    ]


def kontext_size(width: int, height: int) -> tuple[int, int]:
    """The listed (width, height) whose aspect is nearest; ties go to the smaller width."""
    aspect = width / height
    _, w, h = min((abs(aspect - w / h), w, h) for w, h in KONTEXT_RESOLUTIONS)
    return w, h


@register_node
class ReferenceLatent(Node):
    schema = NodeSchema(
        class_type="ReferenceLatent",
        inputs=(Link("conditioning", "CONDITIONING"), Link("latent", "LATENT", optional=True)),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning/edit_models",
        description=(
            "This node sets the guiding latent for an edit model. If the model supports it you can chain "
            "multiple to set multiple reference images."
        ),
    )

    def run(self, ctx: NodeContext, conditioning: Conditioning, latent: dict[str, Any] | None = None) -> tuple[Any]:
        conditioning = _check_conditioning(conditioning, "conditioning")
        if latent is None:
            return (conditioning,)
        samples = latent.get("samples") if isinstance(latent, dict) else None
        if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
            raise ValueError("ReferenceLatent needs an image LATENT ({'samples': [B, C, H, W]})")
        return (append_reference(conditioning, samples),)


@register_node
class FluxKontextImageScale(Node):
    schema = NodeSchema(
        class_type="FluxKontextImageScale",
        inputs=(Link("image", "IMAGE"),),
        outputs=(OutputSpec("IMAGE"),),
        category="advanced/conditioning/flux",
        description="This node resizes the image to one that is more optimal for flux kontext.",
    )

    def run(self, ctx: NodeContext, image: torch.Tensor) -> tuple[torch.Tensor]:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError("FluxKontextImageScale needs an IMAGE [B, H, W, C]")
        width, height = kontext_size(int(image.shape[2]), int(image.shape[1]))
        return (common_upscale(image.movedim(-1, 1), width, height, "lanczos", "center").movedim(1, -1),)


@register_node
class FluxKontextMultiReferenceLatentMethod(Node):
    schema = NodeSchema(
        class_type="FluxKontextMultiReferenceLatentMethod",
        inputs=(
            Link("conditioning", "CONDITIONING"),
            Combo("reference_latents_method", REFERENCE_METHODS, combo_as_options=True),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="advanced/conditioning/flux",
    )

    def run(self, ctx: NodeContext, conditioning: Conditioning, reference_latents_method: str) -> tuple[Any]:
        conditioning = _check_conditioning(conditioning, "conditioning")
        method = "uxo" if "uxo" in reference_latents_method or "uso" in reference_latents_method else reference_latents_method
        return (set_conditioning_values(conditioning, {"reference_latents_method": method}),)
