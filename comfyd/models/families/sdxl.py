"""SDXL: CLIP-L + OpenCLIP-bigG, their contexts concatenated, pooled + size vector conditioning.

Single file: `model.diffusion_model.*` (with `label_emb`, ADM 2816) +
`conditioner.embedders.0.transformer.*` (CLIP-L) + `conditioner.embedders.1.model.*`
(OpenCLIP-bigG) + `first_stage_model.*`. Turbo, lightning and other fine-tunes share the layout.
Diffusers: `text_encoder/` + `text_encoder_2/`, UNet `addition_embed_type` text_time.
ComfyUI: comfy/sdxl_clip.py (both encoders penultimate without norm; CLIP-L pads with the end
token, bigG with 0; pooled from bigG, projected), latent_formats.SDXL, `SDXL.encode_adm`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from comfyd.models.clip_tokens import END_TOKEN, ChunkLayout
from comfyd.models.families.base import (
    LABEL_EMB_KEY,
    ConfigReader,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    LatentFormat,
    SamplingSpec,
    is_text_time_pipeline,
)
from comfyd.sampling.vector_conditioning import pooled_and_sizes

TINY_TIME_DIM = 8  # size/crop embedding width of the tiny UNet (256 in the real model)

CLIP_L = EncoderSpec(
    name="l",
    config="text_encoder_l.json",
    layout="hf",
    single_file_prefixes=("conditioner.embedders.0.transformer.",),
    tokenizer={"pad_token": "<|endoftext|>"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=END_TOKEN), -2, norm_intermediate=False, projected_pooled=True),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te1_",
    lora_components=("te", "te1"),
)
OPENCLIP_G = EncoderSpec(
    name="g",
    config="text_encoder_g.json",
    layout="openclip",
    single_file_prefixes=("conditioner.embedders.1.model.",),
    tokenizer={"pad_token": "!"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0), -2, norm_intermediate=False, projected_pooled=True),
    diffusers_folders=("text_encoder_2", "tokenizer_2"),
    kohya_prefix="lora_te2_",
    lora_components=("te2",),
)


class SDXL(Family):
    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if "conditioner.embedders.0.model." in prefixes and LABEL_EMB_KEY in keys:
            return "looks like an SDXL refiner (OpenCLIP-G only, label_emb); refiners are not supported"
        return None

    def recognise_diffusers(self, folder: Path, read_config: ConfigReader) -> bool:
        return is_text_time_pipeline(folder, read_config)

    def tiny_unet_layout(self, encoders: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        pooled = int(encoders["g"]["projection_dim"])
        return {
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
            "transformer_layers_per_block": [1, 2],
            "addition_time_embed_dim": TINY_TIME_DIM,
            "projection_class_embeddings_input_dim": pooled + 6 * TINY_TIME_DIM,
        }


FAMILY = SDXL(
    name="sdxl",
    encoders=(CLIP_L, OPENCLIP_G),
    latent=LatentFormat(
        channels=4,
        scale_factor=0.13025,
        rgb_factors=(
            (0.3651, 0.4232, 0.4341),
            (-0.2533, -0.0042, 0.1068),
            (0.1076, 0.1111, -0.0362),
            (-0.3165, -0.2492, -0.2188),
        ),
        rgb_bias=(0.1084, -0.0175, -0.0011),
    ),
    unet_heads_rule=HeadRule("head_dim", 64),
    sampling=SamplingSpec(prediction="eps"),
    pooled_encoder="g",
    vector_conditioning=pooled_and_sizes,
    context_order=("l", "g"),
    diffusers_pipeline="StableDiffusionXLPipeline",
    diffusers_index_extras={"force_zeros_for_empty_prompt": True},
    embedding_keys=("clip_l", "clip_g"),
    vae_name_hints=("xl",),
)
