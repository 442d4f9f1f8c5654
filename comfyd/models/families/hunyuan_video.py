"""HunyuanVideo text-to-video: a flow-matching dual/single-stream video transformer on a
16-channel 3-D latent, LLaVA-Llama-3 + CLIP-L text encoders, guidance-distilled.

Files, as ComfyUI loads them: the transformer alone in `diffusion_models/` (UNETLoader;
`_hunyuan_transformer.py`), `clip_l.safetensors` and `llava_llama3_fp8_scaled.safetensors` (or
fp16) in `text_encoders/` (DualCLIPLoader, type hunyuan_video; `models/llama_encoder.py`) and
`hunyuan_video_vae_bf16.safetensors` in `vae/` (VAELoader; `_hunyuan_vae.py`).
Sampling: ModelSamplingDiscreteFlow with shift 7 and multiplier 1000, CONST prediction (ComfyUI's
HunyuanVideo). Conditioning: the Llama context (the user part of ComfyUI's template), the CLIP-L
pooled output as the vector input, the guidance strength (FluxGuidance; 6.0 when unset).
Latent: ComfyUI's HunyuanVideo format, 16 channels, scale 0.476986, 8x spatial and 4x temporal
compression (1 + 4k frames).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.clip_tokens import END_TOKEN, ChunkLayout
from comfyd.models.families import _hunyuan_transformer as transformer
from comfyd.models.families import _hunyuan_vae as video_vae
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
from comfyd.sampling.vector_conditioning import pooled_and_guidance

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 7.0
CLIP_L = EncoderSpec(
    name="l",
    config="text_encoder_l.json",
    layout="hf",
    single_file_prefixes=("text_encoders.clip_l.transformer.",),
    tokenizer={"pad_token": "<|endoftext|>"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=END_TOKEN), None, norm_intermediate=True, projected_pooled=False),
    diffusers_folders=("text_encoder_2", "tokenizer_2"),
    kohya_prefix="lora_te1_",
    lora_components=("te1",),
)
LLAMA = EncoderSpec(
    name="llama",
    config="",  # read from the file's shapes (comfyd.models.llama_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.llama.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0), None, norm_intermediate=False, projected_pooled=False),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te",),
    kind="llama",
)


def model_sampling() -> FlowModelSampling:
    return FlowModelSampling(TimeShiftSchedule(shift=SHIFT, multiplier=1000.0))


def hunyuan_guidance(item: dict[str, Any], dims: tuple[int, ...]) -> dict[str, Any]:
    """The pooled CLIP-L vector and the guidance (ComfyUI's HunyuanVideo default is 6.0)."""
    return pooled_and_guidance({"guidance": transformer.DEFAULT_GUIDANCE, **item}, dims)


class HunyuanVideo(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._hunyuan_tiny import write_tiny_hunyuan_video

        return write_tiny_hunyuan_video(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # the parts load through the split loaders (models.standalone)

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_hunyuan_transformer(keys, ""):
            return "looks like a HunyuanVideo transformer alone: load it with UNETLoader (models/diffusion_models)"
        return None

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_hunyuan_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        if config["in_channels"] != video_vae.LATENT_CHANNELS:
            raise ValueError(
                f"HunyuanVideo image-to-video transformers ({config['in_channels']} input channels) are "
                "not supported yet; the text-to-video one (16) is"
            )
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.HunyuanTranslator(config, list(tf.keys()), prefix), what="HunyuanVideo transformer",
        )  # fmt: skip
        return transformer.HunyuanNetwork(net), model_sampling()

    def load_vae(self, tf: TensorFile, plan: Any) -> Any | None:
        from comfyd.models.loader import materialize

        keys = set(tf.keys())
        for prefix in ("", "vae."):
            if video_vae.is_hunyuan_vae(keys, prefix):
                config = video_vae.infer_config(tf.shapes(), prefix)
                if config["latent_channels"] != video_vae.LATENT_CHANNELS:
                    return None
                return materialize(
                    video_vae.empty_vae(config), video_vae.translator(config, prefix), tf,
                    plan.device, plan.vae_dtype, what="HunyuanVideo VAE",
                )  # fmt: skip
        return None


FAMILY = HunyuanVideo(
    name="hunyuan-video",
    encoders=(CLIP_L, LLAMA),
    latent=LatentFormat(
        channels=16,
        scale_factor=0.476986,
        rgb_factors=(
            (-0.0395, -0.0331, 0.0445),
            (0.0696, 0.0795, 0.0518),
            (0.0135, -0.0945, -0.0282),
            (0.0108, -0.0250, -0.0765),
            (-0.0209, 0.0032, 0.0224),
            (-0.0804, -0.0254, -0.0639),
            (-0.0991, 0.0271, -0.0669),
            (-0.0646, -0.0422, -0.0400),
            (-0.0696, -0.0595, -0.0894),
            (-0.0799, -0.0208, -0.0375),
            (0.1166, 0.1627, 0.0962),
            (0.1165, 0.0432, 0.0407),
            (-0.2315, -0.1920, -0.1355),
            (-0.0270, 0.0401, -0.0821),
            (-0.0616, -0.0997, -0.0727),
            (0.0249, -0.0469, -0.1703),
        ),
        rgb_bias=(0.0259, -0.0192, -0.0761),
    ),
    unet_heads_rule=HeadRule("head_dim", 128),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    pooled_encoder="l",
    vector_conditioning=hunyuan_guidance,
    context_order=("llama",),
    diffusers_pipeline="HunyuanVideoPipeline",
    embedding_keys=("clip_l",),
    vae_name_hints=("hunyuan",),
    # The CLIP-L config is SD1's (the same text model); everything else is read from the files.
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("hunyuan_video",),
    checkpoint_vae_prefix="vae.",
)
