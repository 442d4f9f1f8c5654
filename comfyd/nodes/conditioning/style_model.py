"""StyleModelApply: a style model's image tokens appended to every conditioning entry (ComfyUI's
nodes.py, 0.3.64, with its `strength_type`).

`multiply` scales the tokens by the strength. `attn_bias` leaves them as they are and records
log(strength) as an attention bias towards them in the entry's `attention_mask` (widening a mask
already there), as ComfyUI does; ComfyUI's SD1/SD2/SDXL UNets do not read that mask, and neither
does comfyd's sampler, so on these models the tokens then count at full strength in both.
"""

from __future__ import annotations

from typing import Any

import torch

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Combo, Float, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.clip_vision import ClipVisionOutput
from comfyd.models.style_model import StyleModelHandle
from comfyd.models.text_encoding import Conditioning
from comfyd.nodes.conditioning.clip_text import _check_conditioning
from comfyd.nodes.conditioning.clip_vision import require_vision_output


def _widened_mask(options: dict[str, Any], n_txt: int, n_new: int, batch: int, bias: float) -> torch.Tensor:
    """The entry's attention mask with `n_new` tokens inserted after the text, biased by `bias`."""
    ref_h, ref_w = options.get("attention_mask_img_shape", (1, 1))
    n_ref = ref_h * ref_w
    mask = options.get("attention_mask")
    if mask is None:
        mask = torch.zeros((batch, n_txt + n_ref, n_txt + n_ref), dtype=torch.float16)
    if mask.dtype == torch.bool:
        mask = torch.log(mask.to(dtype=torch.float16))  # True -> 0, False -> -inf
    size = n_txt + n_new + n_ref
    out = torch.zeros((batch, size, size), dtype=torch.float16)
    tail = n_txt + n_new
    out[:, :n_txt, :n_txt] = mask[:, :n_txt, :n_txt]
    out[:, :n_txt, tail:] = mask[:, :n_txt, n_txt:]
    out[:, tail:, :n_txt] = mask[:, n_txt:, :n_txt]
    out[:, tail:, tail:] = mask[:, n_txt:, n_txt:]
    out[:, :n_txt, n_txt:tail] = bias
    out[:, tail:, n_txt:tail] = bias
    return out


@register_node
class StyleModelApply(Node):
    schema = NodeSchema(
        class_type="StyleModelApply",
        inputs=(
            Link("conditioning", "CONDITIONING"),
            Link("style_model", "STYLE_MODEL"),
            Link("clip_vision_output", "CLIP_VISION_OUTPUT"),
            Float("strength", default=1.0, min=0.0, max=10.0, step=0.001),
            Combo("strength_type", ["multiply", "attn_bias"]),
        ),
        outputs=(OutputSpec("CONDITIONING"),),
        category="conditioning/style_model",
    )

    def run(
        self,
        ctx: NodeContext,
        conditioning: Conditioning,
        style_model: StyleModelHandle,
        clip_vision_output: ClipVisionOutput,
        strength: float,
        strength_type: str,
    ) -> tuple[Conditioning]:
        conditioning = _check_conditioning(conditioning, "conditioning")
        if not isinstance(style_model, StyleModelHandle):
            raise TypeError(f"style_model must be a STYLE_MODEL, got {type(style_model).__name__}")
        tokens = style_model.tokens(require_vision_output(clip_vision_output))
        tokens = tokens.flatten(start_dim=0, end_dim=1).unsqueeze(dim=0)  # every image's tokens
        if strength_type == "multiply":
            tokens = tokens * strength
        n_new = tokens.shape[1]
        bias = float(torch.log(torch.tensor([strength if strength_type == "attn_bias" else 1.0])))
        out: Conditioning = []
        for cond, options in conditioning:
            if cond.shape[0] != 1 or cond.shape[2] != tokens.shape[2]:
                raise ValueError(
                    f"StyleModelApply appends {tokens.shape[2]}-wide tokens to one conditioning; got a "
                    f"conditioning of shape {tuple(cond.shape)} (an SD1 prompt, batch 1, is expected)"
                )
            options = dict(options)
            if "attention_mask" in options or (strength_type == "attn_bias" and strength != 1.0):
                options["attention_mask"] = _widened_mask(options, cond.shape[1], n_new, cond.shape[0], bias)
                options["attention_mask_img_shape"] = options.get("attention_mask_img_shape", (1, 1))
            out.append([torch.cat((cond, tokens.to(cond.dtype)), dim=1), options])
        return (out,)
