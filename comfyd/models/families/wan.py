"""Wan 2.1 text-to-video: a flow-matching video transformer on a 16-channel 3-D latent, UMT5-XXL.

Files, as ComfyUI loads them: the transformer alone in `diffusion_models/` (UNETLoader; the
original layout, `_wan_transformer.py`), `umt5_xxl*.safetensors` in `text_encoders/` (CLIPLoader,
type wan; `models/umt5_encoder.py`, tokenizer read from the file) and `wan_2.1_vae.safetensors` in
`vae/` (VAELoader; `_wan_vae.py`). Sampling: ModelSamplingDiscreteFlow with shift 8 and
multiplier 1000, CONST prediction (ComfyUI's WAN21_T2V). Latent: ComfyUI's Wan21 format, 16
channels normalised per channel, (latent - mean) / std on the way into the sampler, 8x spatial
and 4x temporal compression (1 + 4k frames).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families import _wan_clip, _wan_i2v
from comfyd.models.families import _wan_transformer as transformer
from comfyd.models.families import _wan_vae as video_vae
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
from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule
from comfyd.sampling.protocols import VectorConditioning

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 8.0
LATENT_CHANNELS = 16
LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip

UMT5XXL = EncoderSpec(
    name="umt5xxl",
    config="",  # read from the file's shapes (comfyd.models.umt5_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.umt5xxl.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(
        ChunkLayout(pad_token=0, end_token=1), None, norm_intermediate=False, projected_pooled=False
    ),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te",),
    kind="umt5",
)


def model_sampling() -> FlowModelSampling:
    return FlowModelSampling(TimeShiftSchedule(shift=SHIFT, multiplier=1000.0))


class Wan(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._wan_tiny import write_tiny_wan
        from comfyd.models.families._wan_tiny_clip import write_tiny_wan_clip

        return [*write_tiny_wan(root), *write_tiny_wan_clip(root)]

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # the parts load through the split loaders (models.standalone)

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_wan_transformer(keys, ""):
            return "looks like a Wan transformer alone: load it with UNETLoader (models/diffusion_models)"
        return None

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_wan_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.WanTranslator(list(tf.keys()), prefix), what="Wan transformer",
        )  # fmt: skip
        return transformer.WanNetwork(net), model_sampling()

    def vector_builder(self, unet_config: Mapping[str, Any]) -> VectorConditioning | None:
        extra = int(unet_config.get("in_channels", LATENT_CHANNELS)) - LATENT_CHANNELS
        builder = None  # text-to-video: nothing but the latent goes in
        if extra > _wan_i2v.MASK_CHANNELS:
            builder = _wan_i2v.concat_builder(LATENTS_MEAN, LATENTS_STD, extra - _wan_i2v.MASK_CHANNELS)
        if unet_config.get("image_dim"):  # Wan 2.1 I2V / FLF2V: CLIP vision features too
            return _wan_clip.with_clip_features(builder, int(unet_config["image_dim"]))
        return builder

    def load_vae(self, tf: TensorFile, plan: Any) -> Any | None:
        from comfyd.models.loader import materialize

        keys = set(tf.keys())
        for prefix in ("", "vae."):
            if video_vae.is_wan_vae(keys, prefix):
                config = video_vae.infer_config(tf.shapes(), prefix)
                return materialize(
                    video_vae.empty_vae(config), video_vae.WanVaeTranslator(list(keys), prefix), tf,
                    plan.device, plan.vae_dtype, what="Wan VAE",
                )  # fmt: skip
        return None


FAMILY = Wan(
    name="wan",
    encoders=(UMT5XXL,),
    latent=LatentFormat(
        channels=16,
        scale_factor=1.0,
        channel_mean=LATENTS_MEAN,
        channel_std=LATENTS_STD,
        rgb_factors=(
            (-0.1299, -0.1692, 0.2932),
            (0.0671, 0.0406, 0.0442),
            (0.3568, 0.2548, 0.1747),
            (0.0372, 0.2344, 0.1420),
            (0.0313, 0.0189, -0.0328),
            (0.0296, -0.0956, -0.0665),
            (-0.3477, -0.4059, -0.2925),
            (0.0166, 0.1902, 0.1975),
            (-0.0412, 0.0267, -0.1364),
            (-0.1293, 0.0740, 0.1636),
            (0.0680, 0.3019, 0.1128),
            (0.0032, 0.0581, 0.0639),
            (-0.1251, 0.0927, 0.1699),
            (0.0060, -0.0633, 0.0005),
            (0.3477, 0.2275, 0.2950),
            (0.1984, 0.0913, 0.1861),
        ),
        rgb_bias=(-0.1835, -0.0868, -0.3360),
    ),  # fmt: skip
    unet_heads_rule=HeadRule("head_dim", transformer.HEAD_DIM),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    context_order=("umt5xxl",),
    diffusers_pipeline="WanPipeline",
    embedding_keys=("umt5xxl",),
    vae_name_hints=("wan",),
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("wan",),
    checkpoint_vae_prefix="vae.",
)
