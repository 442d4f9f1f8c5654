"""Stable Diffusion 2.x: OpenCLIP-H text encoder, SD1's latent space, epsilon or v prediction.

Single file: `model.diffusion_model.*` + `cond_stage_model.model.*` (OpenCLIP names; also the
SGM spelling `conditioner.embedders.0.model.*`, without SDXL's `label_emb`) + `first_stage_model.*`.
Diffusers: one `text_encoder/` whose activation is gelu.
ComfyUI: comfy/text_encoders/sd2_clip.py (penultimate layer + final norm, pad 0, pooled projected
where the file has the projection).

Prediction type (ComfyUI's rule where it has one):
1. a `v_pred` key means v-prediction;
2. v-prediction when the population standard deviation of
   `output_blocks.<last>.1.transformer_blocks.0.norm1.bias` exceeds 0.09 (the 768-v models);
   otherwise epsilon (512-base);
3. where that tensor is absent: `modelspec.prediction_type` metadata if present, else epsilon
   when `modelspec.resolution` says 512, else v (the common SD2 768-v).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families.base import (
    UNET_PREFIX,
    ConfigReader,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    SamplingSpec,
    is_text_time_pipeline,
)
from comfyd.models.families.sd1 import SD15_LATENT

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

V_PRED_STD_THRESHOLD = 0.09
V_PRED_BIAS_STD = 0.2  # what the tiny writer gives a v-prediction checkpoint's marker bias
STORAGE_DTYPE = torch.float16

OPENCLIP_H = EncoderSpec(
    name="h",
    config="text_encoder_h.json",
    layout="openclip",
    single_file_prefixes=("cond_stage_model.model.", "conditioner.embedders.0.model."),
    tokenizer={"pad_token": "!"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0), -2, norm_intermediate=True, projected_pooled=True),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te", "te1"),
)


def _marker_index(unet_config: Mapping[str, Any]) -> tuple[int, int]:
    """(level, block) of the last up-block attention: the prediction statistic's home."""
    return len(unet_config["block_out_channels"]) - 1, int(unet_config["layers_per_block"])


class SD2(Family):
    def prediction(
        self, tf: TensorFile, unet_config: Mapping[str, Any], keys: set[str]
    ) -> tuple[str, str]:
        if "v_pred" in keys:
            return "v", "v_pred key present"
        level, block = _marker_index(unet_config)
        last = (level + 1) * (block + 1) - 1
        stat_key = f"{UNET_PREFIX}output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
        if stat_key in keys:
            std = float(torch.std(tf.get(stat_key).float(), unbiased=False))
            if std > V_PRED_STD_THRESHOLD:
                return "v", f"std of {stat_key} = {std:.4f} > {V_PRED_STD_THRESHOLD}"
            return "eps", f"std of {stat_key} = {std:.4f} <= {V_PRED_STD_THRESHOLD}"
        declared = tf.metadata.get("modelspec.prediction_type", "").lower()
        if declared in ("v", "v_prediction", "v-prediction"):
            return "v", "modelspec.prediction_type metadata"
        if declared in ("eps", "epsilon"):
            return "eps", "modelspec.prediction_type metadata"
        if tf.metadata.get("modelspec.resolution", "").startswith("512"):
            return "eps", "modelspec.resolution 512 (SD2 base)"
        return "v", "SD2 default (768-v)"

    def recognise_diffusers(self, folder: Path, read_config: ConfigReader) -> bool:
        if not (folder / "text_encoder").is_dir() or is_text_time_pipeline(folder, read_config):
            return False
        return read_config(folder, "text_encoder").get("hidden_act") == "gelu"

    def tiny_encoder_config(self, config: dict[str, Any]) -> dict[str, Any]:
        # Like a real SD2 single file, with OpenCLIP's text projection.
        return dict(config, architectures=["CLIPTextModelWithProjection"])

    def mark_prediction(
        self,
        unet_config: Mapping[str, Any],
        unet_weights: dict[str, torch.Tensor],
        prediction: str,
        generator: torch.Generator,
    ) -> None:
        level, block = _marker_index(unet_config)
        key = f"up_blocks.{level}.attentions.{block}.transformer_blocks.0.norm1.bias"
        bias = unet_weights[key]
        scale = V_PRED_BIAS_STD if prediction == "v" else 0.02
        noise = torch.randn(bias.shape, generator=generator)
        unet_weights[key] = (noise * scale).to(STORAGE_DTYPE)

    def extra_single_file_tensors(self) -> dict[str, torch.Tensor]:
        return {"cond_stage_model.model.logit_scale": torch.tensor(4.6052, dtype=STORAGE_DTYPE)}


FAMILY = SD2(
    name="sd2",
    encoders=(OPENCLIP_H,),
    latent=SD15_LATENT,
    unet_heads_rule=HeadRule("head_dim", 64),
    sampling=SamplingSpec(prediction="v"),
    diffusers_pipeline="StableDiffusionPipeline",
    diffusers_index_extras={
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    },
    tiny_predictions=("eps", "v"),
)
