"""LTX-Video 0.9 / 0.9.1 / 0.9.5 (2B): a flow-matching video transformer on a 128-channel latent, T5-XXL.

Files, as ComfyUI 0.3.64 loads them: the all-in-one ltx-video-2b-v0.9(.1, .5).safetensors in
`checkpoints/` (CheckpointLoaderSimple: the transformer under `model.diffusion_model.`,
`_ltxv_transformer.py`; the video VAE under `vae.`, `_ltxv_vae.py`; no text encoder, so the loader
gives no CLIP) or the transformer alone in `diffusion_models/` (UNETLoader), and a T5-XXL in
`text_encoders/` (CLIPLoader, type ltxv). Sampling: ModelSamplingFlux with shift 2.37 (ComfyUI's
LTXV), CONST prediction; LTXVScheduler / ModelSamplingLTXV change the schedule.
Text (comfy/text_encoders/lt.py, genmo.py): T5 padded to at least 128 tokens, the padding masked
out of the encoder's attention (not zeroed), the mask kept with the conditioning for the
transformer's cross-attention. Latent: 128 channels, 32x spatial and 8x temporal compression
(1 + 8k frames), normalised inside the VAE (latent format scale 1, no shift).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families import _ltxv_transformer as transformer
from comfyd.models.families import _ltxv_vae as video_vae
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
from comfyd.sampling.flow import CleanInpaintSampling, ExpTimeShiftSchedule, FlowModelSampling, clean_inpaint

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 2.37
MIN_LENGTH = 128

T5XXL = EncoderSpec(
    name="t5xxl",
    config="",  # read from the file's shapes (comfyd.models.t5_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.t5xxl.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0, end_token=1), None, norm_intermediate=False, projected_pooled=False),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te",),
    kind="t5",
    min_length=MIN_LENGTH,
    attention_mask=True,
)


def model_sampling() -> FlowModelSampling:
    return CleanInpaintSampling(ExpTimeShiftSchedule(shift=SHIFT))


def vector_conditioning(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, torch.Tensor]:
    """What the transformer takes besides the text: the text's padding mask, the frame rate
    (LTXVConditioning; 25 without it) and the denoise mask of image-to-video sampling."""
    out: dict[str, torch.Tensor] = {"frame_rate": torch.tensor([float(item.get("frame_rate", 25.0))])}
    mask = item.get("attention_mask")
    if mask is not None:
        out["encoder_attention_mask"] = torch.as_tensor(mask).reshape(1, -1)
    keyframe_idxs = item.get("keyframe_idxs")
    if keyframe_idxs is not None:
        out["keyframe_idxs"] = torch.as_tensor(keyframe_idxs)
    denoise = item.get("denoise_mask")
    if denoise is not None:
        out["denoise_mask"] = denoise[:, :1]
    return out


class Ltxv(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._ltxv_tiny import write_tiny_ltxv

        return write_tiny_ltxv(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # all-in-one files load through models.standalone

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_ltxv_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        declared = transformer.file_config(tf.path)
        config = transformer.infer_config(tf.shapes(), prefix, declared)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.LtxvTranslator(list(tf.keys()), prefix), what="LTX-Video transformer",
        )  # fmt: skip
        network = transformer.LtxvNetwork(net)
        network.causal_temporal_positioning = bool(declared.get("causal_temporal_positioning", False))
        return network, model_sampling()

    def adapt_model_sampling(self, sampling: Any) -> Any:
        # ComfyUI's LTXV model keeps the original latent under a noise mask (its
        # scale_latent_inpaint), whichever flow schedule a ModelSampling node sets.
        return clean_inpaint(sampling)

    def vector_builder(self, unet_config: Mapping[str, Any]) -> Any:
        return vector_conditioning

    def load_vae(self, tf: TensorFile, plan: Any) -> Any | None:
        from comfyd.models.loader import materialize

        keys = set(tf.keys())
        for prefix in ("", "vae."):
            if video_vae.is_ltxv_vae(keys, prefix):
                config = video_vae.infer_config(tf.shapes(), prefix)
                vae = materialize(
                    video_vae.empty_vae(config), video_vae.LtxvVaeTranslator(list(keys), prefix), tf,
                    plan.device, plan.vae_dtype, what="LTX-Video VAE",
                )  # fmt: skip
                return video_vae.LtxvVideoVae(vae)
        return None


FAMILY = Ltxv(
    name="ltxv",
    encoders=(T5XXL,),
    latent=LatentFormat(channels=128, scale_factor=1.0, downscale=32),
    unet_heads_rule=HeadRule("fixed_heads", transformer.HEADS),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    context_order=("t5xxl",),
    diffusers_pipeline="LTXPipeline",
    embedding_keys=("t5xxl",),
    vae_name_hints=("ltx",),
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("ltxv",),
    checkpoint_vae_prefix="vae.",
)
