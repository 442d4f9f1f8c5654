"""Stable Diffusion 1.x: CLIP-L text encoder, 4-channel latent, epsilon prediction.

Single file: `model.diffusion_model.*` + `cond_stage_model.transformer.*` (transformers names)
+ `first_stage_model.*`. Diffusers: one `text_encoder/` whose activation is quick_gelu.
ComfyUI: comfy/sd1_clip.py (last layer, pad with the end token, pooled unprojected),
latent_formats.SD15, ModelSamplingDiscrete with EPS.
"""

from __future__ import annotations

from pathlib import Path

import torch

from comfyd.models.clip_tokens import END_TOKEN, ChunkLayout
from comfyd.models.families.base import (
    ConfigReader,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    LatentFormat,
    SamplingSpec,
    is_text_time_pipeline,
)

CLIP_L = EncoderSpec(
    name="l",
    config="text_encoder_l.json",
    layout="hf",
    single_file_prefixes=("cond_stage_model.transformer.",),
    tokenizer={"pad_token": "<|endoftext|>"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=END_TOKEN), None, norm_intermediate=True, projected_pooled=False),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te", "te1"),
)

SD15_LATENT = LatentFormat(
    channels=4,
    scale_factor=0.18215,
    rgb_factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
)


class SD1(Family):
    def recognise_diffusers(self, folder: Path, read_config: ConfigReader) -> bool:
        if not (folder / "text_encoder").is_dir() or is_text_time_pipeline(folder, read_config):
            return False
        return read_config(folder, "text_encoder").get("hidden_act") != "gelu"

    def parity_unet_channels(self) -> tuple[int, ...] | None:
        # ComfyUI matches SD1.5 on model_channels 320 and context_dim 768.
        return (320, 640)

    def extra_single_file_tensors(self) -> dict[str, torch.Tensor]:
        return {"cond_stage_model.transformer.text_model.embeddings.position_ids": torch.arange(77)[None]}


FAMILY = SD1(
    name="sd1",
    encoders=(CLIP_L,),
    latent=SD15_LATENT,
    unet_heads_rule=HeadRule("fixed_heads", 8),
    sampling=SamplingSpec(prediction="eps"),
    diffusers_pipeline="StableDiffusionPipeline",
    diffusers_index_extras={
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    },
)
