"""Nodes that cross between latent and pixel space: VAEDecode, VAEEncode, VAEEncodeForInpaint."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from comfyd.engine.context import NodeContext
from comfyd.engine.schema import Int, Link, Node, NodeSchema, OutputSpec, register_node
from comfyd.models.handles import VaeHandle
from comfyd.models.interrupts import interruptible
from comfyd.models.vae_codec import vae_decode, vae_encode


def _latent_samples(latent: Any) -> torch.Tensor:
    if not isinstance(latent, dict) or "samples" not in latent:
        raise ValueError(f"expected a LATENT (a dict with 'samples'), got {type(latent).__name__}")
    return latent["samples"]


@register_node
class VAEDecode(Node):
    schema = NodeSchema(
        class_type="VAEDecode",
        inputs=(
            Link("samples", "LATENT", tooltip="Latent images to turn into pixels."),
            Link("vae", "VAE", tooltip="The autoencoder whose decoder is used."),
        ),
        outputs=(OutputSpec("IMAGE"),),
        category="latent",
        description="Turns latent images into pixel images with the VAE decoder.",
    )

    def run(self, ctx: NodeContext, samples: dict[str, Any], vae: VaeHandle) -> tuple[torch.Tensor]:
        with interruptible(ctx.check_interrupted):
            return (vae_decode(vae, _latent_samples(samples)),)


@register_node
class VAEEncode(Node):
    schema = NodeSchema(
        class_type="VAEEncode",
        inputs=(Link("pixels", "IMAGE"), Link("vae", "VAE")),
        outputs=(OutputSpec("LATENT"),),
        category="latent",
    )

    def run(self, ctx: NodeContext, pixels: torch.Tensor, vae: VaeHandle) -> tuple[dict[str, Any]]:
        return ({"samples": vae_encode(vae, pixels[..., :3])},)


def grey_out_masked(
    pixels: torch.Tensor, mask: torch.Tensor, factor: int, grow_mask_by: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI's inpaint preparation: (pixels with the masked area set to 0.5, grown noise mask).

    The mask is resized (bilinear) to the image, both are cropped to multiples of `factor` with
    the VAE's centred offset, and the noise mask is the rounded mask dilated by a
    `grow_mask_by` square so the seam falls inside the area that gets resampled.
    Returns pixels [B, H', W', C] and noise mask [Bm, 1, H', W'] in {0, 1}.
    """
    height, width = pixels.shape[1], pixels.shape[2]
    new_h = (height // factor) * factor
    new_w = (width // factor) * factor
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of {width}x{height} is smaller than the VAE's {factor}x{factor} block")
    mask = mask.to(dtype=torch.float32, device=pixels.device)
    mask = F.interpolate(
        mask.reshape(-1, 1, mask.shape[-2], mask.shape[-1]), size=(height, width), mode="bilinear"
    )

    pixels = pixels.clone()
    if (new_h, new_w) != (height, width):
        top = (height % factor) // 2
        left = (width % factor) // 2
        pixels = pixels[:, top : top + new_h, left : left + new_w, :]
        mask = mask[:, :, top : top + new_h, left : left + new_w]

    rounded = mask.round()
    if grow_mask_by == 0:
        grown = mask
    else:
        kernel = torch.ones((1, 1, grow_mask_by, grow_mask_by), dtype=mask.dtype)
        padding = math.ceil((grow_mask_by - 1) / 2)
        grown = torch.clamp(F.conv2d(rounded, kernel, padding=padding), 0.0, 1.0)
    noise_mask = grown[:, :, :new_h, :new_w].round()

    # Masked pixels become mid-grey so the encoder sees no trace of what is to be replaced.
    keep = (1.0 - rounded).squeeze(1).unsqueeze(-1)
    pixels[..., :3] = (pixels[..., :3] - 0.5) * keep + 0.5
    return pixels, noise_mask


@register_node
class VAEEncodeForInpaint(Node):
    schema = NodeSchema(
        class_type="VAEEncodeForInpaint",
        inputs=(
            Link("pixels", "IMAGE"),
            Link("vae", "VAE"),
            Link("mask", "MASK"),
            Int("grow_mask_by", default=6, min=0, max=64, step=1),
        ),
        outputs=(OutputSpec("LATENT"),),
        category="latent/inpaint",
    )

    def run(
        self,
        ctx: NodeContext,
        pixels: torch.Tensor,
        vae: VaeHandle,
        mask: torch.Tensor,
        grow_mask_by: int = 6,
    ) -> tuple[dict[str, Any]]:
        prepared, noise_mask = grey_out_masked(pixels, mask, vae.downscale, grow_mask_by)
        return ({"samples": vae_encode(vae, prepared), "noise_mask": noise_mask},)
