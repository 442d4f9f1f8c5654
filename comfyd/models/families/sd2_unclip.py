"""Stable Diffusion 2.1 unCLIP (L and H): SD2 with an image-embedding (ADM) input.

Single file: SD2's layout (`model.diffusion_model.*`, OpenCLIP-H text tower under
`cond_stage_model.model.*`, `first_stage_model.*`) plus a UNet `label_emb` that takes a CLIP
image embedding and its noise-level embedding: 1536 wide for unCLIP-L (ViT-L embeddings, 768),
2048 for unCLIP-H (ViT-H, 1024). The files also carry their CLIP vision tower under
`embedder.model.visual.*` (OpenCLIP names), which unCLIPCheckpointLoader hands out, and the noise
augmentor's statistics, which ComfyUI does not load (nor does comfyd).
ComfyUI: supported_models.SD21UnclipL / SD21UnclipH, model_base.SD21UNCLIP and unclip_adm; the
prediction rule is SD2's. diffusers builds the UNet with a `projection` class embedding.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import Any

from comfyd.models.families.base import ConfigReader, Family, HeadRule, SamplingSpec
from comfyd.models.families.sd1 import SD15_LATENT
from comfyd.models.families.sd2 import OPENCLIP_H, SD2
from comfyd.sampling.protocols import VectorConditioning
from comfyd.sampling.unclip import unclip_vector

ADM_WIDTHS = {1536: "unCLIP-L (ViT-L image embeddings)", 2048: "unCLIP-H (ViT-H image embeddings)"}
DEFAULT_ADM = 1536  # unCLIP-L, as the shipped unet.json (the tiny and parity files are unCLIP-L)


class SD2Unclip(SD2):
    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        # The LDM spelling only: unCLIP files are never in the SGM layout, whose
        # `conditioner.embedders.0.model.` + `label_emb` is the SDXL refiner's.
        found = super().recognise(prefixes, keys)
        if found is None or found["h"] != OPENCLIP_H.single_file_prefixes[0]:
            return None
        return found

    def adm_unet_config(self, adm_in: int, pooled_dim: int | None) -> dict[str, Any]:
        if adm_in not in ADM_WIDTHS:
            raise ValueError(
                f"an SD2 UNet with a {adm_in}-wide class embedding; unCLIP models take "
                + " or ".join(f"{w} ({what})" for w, what in ADM_WIDTHS.items())
            )
        return {"class_embed_type": "projection", "projection_class_embeddings_input_dim": adm_in}

    def vector_builder(self, unet_config: Mapping[str, Any]) -> VectorConditioning | None:
        width = int(unet_config.get("projection_class_embeddings_input_dim") or DEFAULT_ADM)
        return partial(unclip_vector, width=width)

    def recognise_diffusers(self, folder: Path, read_config: ConfigReader) -> bool:
        return super().recognise_diffusers(folder, read_config) and (
            read_config(folder, "unet").get("class_embed_type") == "projection"
        )

    def parity_unet_channels(self) -> tuple[int, ...] | None:
        # ComfyUI matches SD21UnclipL on model_channels 320, a 1024 context and a 1536 ADM input.
        return (320, 640)


FAMILY = SD2Unclip(
    name="sd2_unclip",
    encoders=(OPENCLIP_H,),
    latent=SD15_LATENT,
    unet_heads_rule=HeadRule("head_dim", 64),
    sampling=SamplingSpec(prediction="v"),
    vector_conditioning=partial(unclip_vector, width=DEFAULT_ADM),
    tiny_predictions=("eps", "v"),
    clip_vision_prefix="embedder.model.visual.",
    refines="sd2",  # a diffusers unCLIP folder also looks like SD2
)

__all__ = ["FAMILY", "Family"]
