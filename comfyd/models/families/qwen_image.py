"""Qwen-Image: a flow-matching MMDiT on the 16-channel Wan 2.1 latent, prompted by Qwen2.5-VL-7B.

Files, as ComfyUI 0.3.64 loads them: the transformer alone in `diffusion_models/` (UNETLoader;
`_qwen_image_transformer.py`, recognised by `txt_norm` + `img_in` + joint-attention blocks),
`qwen_2.5_vl_7b*.safetensors` in `text_encoders/` (CLIPLoader type qwen_image;
`models/qwen25_encoder.py`, recognised by its biased q/k/v projections) and
`qwen_image_vae.safetensors` in `vae/` (VAELoader; the Wan 2.1 VAE layout, loaded by the Wan
family's `_wan_vae.py`). ComfyUI: supported_models.QwenImage, model_base.QwenImage,
text_encoders/qwen_image.py, latent_formats.Wan21.

Sampling: CONST (FLUX model type) on ModelSamplingFlux's exponential time shift with shift 1.15
and multiplier 1 unless ModelSamplingAuraFlow replaces it (Qwen-Image's workflows use shift 3.1).
Latent: Wan 2.1's format, 16 channels normalised per channel with Wan's mean and std, over a
3-D latent: an image latent [B, 16, H/8, W/8] (EmptySD3LatentImage) is sampled as
[B, 16, 1, H/8, W/8], as ComfyUI does, and decodes as a one-frame video.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families import _qwen_image_transformer as transformer
from comfyd.models.families._network import load_transformer, transformer_prefix
from comfyd.models.families.base import (
    CONFIG_DIR,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    LatentFormat,
    SamplingSpec,
)
from comfyd.models.families.wan import FAMILY as WAN
from comfyd.models.qwen25_encoder import PAD
from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling
from comfyd.sampling.protocols import VectorConditioning

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 1.15

QWEN25_7B = EncoderSpec(
    name="qwen25_7b",
    config="",  # read from the file's shapes (comfyd.models.qwen25_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.qwen25_7b.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(
        ChunkLayout(pad_token=PAD, end_token=PAD), None, norm_intermediate=False, projected_pooled=False
    ),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te",),
    kind="qwen25_7b",
)


def model_sampling() -> FlowModelSampling:
    return FlowModelSampling(ExpTimeShiftSchedule(shift=SHIFT))


class QwenImage(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._qwen_image_tiny import write_tiny_qwen_image

        return write_tiny_qwen_image(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # the parts load through the split loaders (models.standalone)

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_qwen_image_transformer(keys, ""):
            return (
                "looks like a Qwen-Image transformer alone: load it with UNETLoader (models/diffusion_models)"
            )
        return None

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.QwenImageTranslator:
        # The running network's parameters -> the stored names LoRAs use (the same, under a prefix).
        return transformer.QwenImageTranslator(key_prefix)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_qwen_image_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.QwenImageTranslator(prefix), what="Qwen-Image transformer",
        )  # fmt: skip
        return transformer.QwenImageNetwork(net), model_sampling()

    def vector_builder(self, unet_config: Mapping[str, Any]) -> VectorConditioning | None:
        return transformer.reference_builder(WAN.latent.channel_mean or (), WAN.latent.channel_std or ())


FAMILY = QwenImage(
    name="qwen_image",
    encoders=(QWEN25_7B,),
    latent=LatentFormat(
        channels=16,
        scale_factor=1.0,
        channel_mean=WAN.latent.channel_mean,
        channel_std=WAN.latent.channel_std,
        rgb_factors=WAN.latent.rgb_factors,
        rgb_bias=WAN.latent.rgb_bias,
    ),
    unet_heads_rule=HeadRule("head_dim", 128),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    context_order=("qwen25_7b",),
    diffusers_pipeline="QwenImagePipeline",
    embedding_keys=("qwen25_7b",),
    vae_name_hints=("qwen",),
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("qwen_image",),
    checkpoint_vae_prefix="vae.",
    network_loras=True,
)
