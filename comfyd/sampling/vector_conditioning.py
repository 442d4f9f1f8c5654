"""Vector (ADM) conditioning a UNet takes besides the text context: built per conditioning entry.

`pooled_and_sizes` is SDXL's: the pooled text embedding and six size / crop numbers
(ComfyUI's `SDXL.encode_adm`, diffusers' `text_embeds` / `time_ids`). A model family names the
builder its UNet needs (`protocols.VectorConditioning`); the sampler calls it per entry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

LATENT_TO_PIXELS = 8


def pooled_and_sizes(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
    """The pooled text embedding and [height, width, crop_h, crop_w, target_height, target_width]."""
    pooled = item.get("pooled_output")
    if pooled is None:
        raise ValueError("SDXL conditioning has no pooled_output (encode the prompt with an SDXL CLIP)")
    width = item.get("width", dims[1] * LATENT_TO_PIXELS)
    height = item.get("height", dims[0] * LATENT_TO_PIXELS)
    crop_w = item.get("crop_w", 0)
    crop_h = item.get("crop_h", 0)
    target_width = item.get("target_width", width)
    target_height = item.get("target_height", height)
    sizes = [height, width, crop_h, crop_w, target_height, target_width]
    time_ids = torch.tensor([sizes], dtype=torch.float32).repeat(pooled.shape[0], 1)
    return {"text_embeds": pooled, "time_ids": time_ids}


FLUX_DEFAULT_GUIDANCE = 3.5  # what the model sees when no FluxGuidance / CLIPTextEncodeFlux set one


def pooled_and_guidance(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
    """The pooled CLIP vector and the guidance strength of a guidance-distilled flow transformer."""
    pooled = item.get("pooled_output")
    if pooled is None:
        raise ValueError("Flux conditioning has no pooled_output (encode the prompt with a Flux CLIP)")
    guidance = item.get("guidance", FLUX_DEFAULT_GUIDANCE)
    out = {"pooled": pooled}
    if guidance is not None:
        out["guidance"] = torch.tensor([float(guidance)], dtype=torch.float32)
    return out


def guidance_only(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
    """Chroma: only the guidance strength (FluxGuidance), 0 when the conditioning sets none."""
    return {"guidance": torch.tensor([float(item.get("guidance", 0.0) or 0.0)], dtype=torch.float32)}
