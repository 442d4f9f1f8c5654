"""Flux.1 (dev and schnell): a rectified-flow transformer on a 16-channel latent, CLIP-L + T5-XXL.

Files, as ComfyUI loads them: the transformer alone in `diffusion_models/` (UNETLoader; BFL's
layout, `_flux_transformer.py`), `clip_l.safetensors` and a T5-XXL in `text_encoders/`
(DualCLIPLoader, type flux) and `ae.safetensors` in `vae/` (the LDM autoencoder layout with 16
latent channels and no quant convs; VAELoader). dev has a guidance embedding (`guidance_in`) and
samples with ModelSamplingFlux (shift 1.15); schnell has none and samples with
ModelSamplingDiscreteFlow (shift 1, multiplier 1). Both predict CONST (x - v * sigma).
Fill (384 input channels: latent + masked-image latent + 8x8-folded mask) and Kontext (reference
latents appended as extra tokens) are the same transformer reading more of the conditioning
(`_flux_inputs.py`). ComfyUI: comfy/supported_models.py Flux / FluxSchnell, comfy/text_encoders/flux.py (CLIP-L last
layer, pooled unprojected; T5 context, min length 256), latent_formats.Flux, model_base.Flux
(guidance 3.5 unless the conditioning says otherwise).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.clip_tokens import END_TOKEN, ChunkLayout
from comfyd.models.families import _flux_inputs
from comfyd.models.families import _flux_transformer as transformer
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
from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling, TimeShiftSchedule
from comfyd.sampling.vector_conditioning import pooled_and_guidance

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile
    from comfyd.sampling.protocols import VectorConditioning

DEV_SHIFT = 1.15
# Stored in fp8, ComfyUI builds every Flux parameter in fp8 (the modulation linears too, ~3.2B of
# the 12B): so every linear is stored and cast per layer, and the q/k RMSNorm scales (all that is
# left) are rounded through fp8 in the compute dtype. pos_embed holds no weights.
FP8_KEEP = ("pos_embed",)
CLIP_L = EncoderSpec(
    name="l",
    config="text_encoder_l.json",
    layout="hf",
    single_file_prefixes=("text_encoders.clip_l.transformer.",),
    tokenizer={"pad_token": "<|endoftext|>"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=END_TOKEN), None, norm_intermediate=True, projected_pooled=False),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te1_",
    lora_components=("te", "te1"),
)
T5XXL = EncoderSpec(
    name="t5xxl",
    config="",  # read from the file's shapes (comfyd.models.t5_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.t5xxl.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0, end_token=1), None, norm_intermediate=False, projected_pooled=False),
    diffusers_folders=("text_encoder_2", "tokenizer_2"),
    kohya_prefix="lora_te2_",
    lora_components=("te2",),
    kind="t5",
)


def model_sampling_for(guidance_embeds: bool) -> FlowModelSampling:
    """dev (guidance embedding): the Flux time shift; schnell: the plain flow table."""
    if guidance_embeds:
        return FlowModelSampling(ExpTimeShiftSchedule(shift=DEV_SHIFT))
    return FlowModelSampling(TimeShiftSchedule(shift=1.0, multiplier=1.0))


class Flux(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._flux_tiny import write_tiny_flux

        return write_tiny_flux(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # all-in-one files load through models.standalone, not the UNet loader

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_flux_transformer(keys, ""):
            return (
                "looks like a Flux transformer alone: load it with UNETLoader (models/diffusion_models), "
                "not as a checkpoint"
            )
        return None

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.FluxNetworkTranslator:
        # The running network's parameters -> BFL keys (LoRAs and block merges name those).
        return transformer.FluxNetworkTranslator(config, key_prefix)

    def vector_builder(self, unet_config: Mapping[str, Any]) -> VectorConditioning | None:
        # Per latent cell: the transformer's stored widths are 2x2 patches.
        cells = transformer.PATCH * transformer.PATCH
        in_channels = int(unet_config.get("in_channels", 64)) // cells
        out_channels = int(unet_config.get("out_channels") or 64) // cells
        return _flux_inputs.flux_builder(in_channels, out_channels, self.latent.scale_factor, self.latent.shift)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_flux_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.FluxTranslator(config, prefix), what="Flux transformer",
            keep=FP8_KEEP, round_kept=True,
        )  # fmt: skip
        return transformer.FluxNetwork(net), model_sampling_for(bool(config["guidance_embeds"]))


FAMILY = Flux(
    name="flux",
    encoders=(CLIP_L, T5XXL),
    latent=LatentFormat(
        channels=16,
        scale_factor=0.3611,
        shift=0.1159,
        rgb_factors=(
            (-0.0346, 0.0244, 0.0681),
            (0.0034, 0.0210, 0.0687),
            (0.0275, -0.0668, -0.0433),
            (-0.0174, 0.0160, 0.0617),
            (0.0859, 0.0721, 0.0329),
            (0.0004, 0.0383, 0.0115),
            (0.0405, 0.0861, 0.0915),
            (-0.0236, -0.0185, -0.0259),
            (-0.0245, 0.0250, 0.1180),
            (0.1008, 0.0755, -0.0421),
            (-0.0515, 0.0201, 0.0011),
            (0.0428, -0.0012, -0.0036),
            (0.0817, 0.0765, 0.0749),
            (-0.1264, -0.0522, -0.1103),
            (-0.0280, -0.0881, -0.0499),
            (-0.1262, -0.0982, -0.0778),
        ),
        rgb_bias=(-0.0329, -0.0718, -0.0851),
    ),
    unet_heads_rule=HeadRule("head_dim", 128),
    sampling=SamplingSpec(prediction="eps"),  # unused: the transformer's file decides (dev / schnell)
    pooled_encoder="l",
    vector_conditioning=pooled_and_guidance,
    context_order=("t5xxl",),
    diffusers_pipeline="FluxPipeline",
    embedding_keys=("clip_l", "t5xxl"),
    vae_name_hints=("flux",),
    # The CLIP-L config is SD1's (the same text model); everything else is read from the files.
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("flux",),
    checkpoint_vae_prefix="vae.",
    network_loras=True,
)
