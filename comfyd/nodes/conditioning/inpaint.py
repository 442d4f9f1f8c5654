"""InpaintModelConditioning: the latent, noise mask and conditioning an inpainting model needs.

The conditioning entries get `concat_latent_image` (the picture with the masked area greyed,
encoded) and `concat_mask`; only inpainting checkpoints read them (comfyd loads none yet, see the
README), so with other models the node's effect is its latent: the *unmasked* picture encoded,
with the mask as noise mask when `noise_mask` is on.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Boolean, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import VaeHandle
from comfyd.models.text_encoding import Conditioning
from comfyd.models.vae_codec import vae_encode
from comfyd.nodes.conditioning.clip_text import _check_conditioning, set_conditioning_values

# ComfyUI crops to multiples of 8 here whatever the VAE's factor.
_CROP = 8


@register_node
class InpaintModelConditioning(Node):
    schema = NodeSchema(
        class_type="InpaintModelConditioning",
        inputs=(
            Link("positive", "CONDITIONING"),
            Link("negative", "CONDITIONING"),
            Link("vae", "VAE"),
            Link("pixels", "IMAGE"),
            Link("mask", "MASK"),
            Boolean(
                "noise_mask",
                default=True,
                tooltip="Add a noise mask to the latent so sampling will only happen within the mask. Might "
                "improve results or completely break things depending on the model.",
            ),
        ),
        outputs=(
            OutputSpec("CONDITIONING", "positive"),
            OutputSpec("CONDITIONING", "negative"),
            OutputSpec("LATENT", "latent"),
        ),
        category="conditioning/inpaint",
    )

    def run(
        self,
        ctx: NodeContext,
        positive: Conditioning,
        negative: Conditioning,
        vae: VaeHandle,
        pixels: torch.Tensor,
        mask: torch.Tensor,
        noise_mask: bool = True,
    ) -> tuple[Conditioning, Conditioning, dict[str, Any]]:
        positive = _check_conditioning(positive, "positive")
        negative = _check_conditioning(negative, "negative")
        height, width = pixels.shape[1], pixels.shape[2]
        new_h, new_w = (height // _CROP) * _CROP, (width // _CROP) * _CROP
        mask = mask.to(torch.float32).reshape(-1, 1, mask.shape[-2], mask.shape[-1])
        mask = F.interpolate(mask, size=(height, width), mode="bilinear")

        greyed = pixels.clone()
        if (new_h, new_w) != (height, width):
            top, left = (height % _CROP) // 2, (width % _CROP) // 2
            greyed = greyed[:, top : top + new_h, left : left + new_w, :]
            mask = mask[:, :, top : top + new_h, left : left + new_w]
        keep = (1.0 - mask.round()).squeeze(1).unsqueeze(-1)
        greyed[..., :3] = (greyed[..., :3] - 0.5) * keep + 0.5

        concat_latent = vae_encode(vae, greyed)
        latent: dict[str, Any] = {"samples": vae_encode(vae, pixels)}
        if noise_mask:
            latent["noise_mask"] = mask
        values = {"concat_latent_image": concat_latent, "concat_mask": mask}
        return (
            set_conditioning_values(positive, values),
            set_conditioning_values(negative, values),
            latent,
        )
