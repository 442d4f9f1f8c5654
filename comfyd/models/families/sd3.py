"""SD3 / SD3.5 (medium, large): an MMDiT on a 16-channel latent, CLIP-L + CLIP-G + T5-XXL.

Files, as ComfyUI 0.3.64 loads them: all-in-one checkpoints (`model.diffusion_model.*` in
Stability's `joint_blocks` layout, `first_stage_model.*` the 16-channel autoencoder,
`text_encoders.{clip_l,clip_g,t5xxl}.transformer.*`, any of the three encoders may be absent)
through CheckpointLoaderSimple; or split: the MMDiT alone through UNETLoader, the encoders from
`text_encoders/` through TripleCLIPLoader, DualCLIPLoader type sd3 or CLIPLoader type sd3 (any
subset), the VAE through VAELoader. A CLIP text model with a 31st layer is CLIP-G (ComfyUI's rule),
others CLIP-L; T5 files are T5-XXL.
ComfyUI: comfy/supported_models.py SD3 (flow, shift 3), comfy/text_encoders/sd3_clip.py (CLIP-L
and CLIP-G penultimate without the final norm; L's pooled output unprojected, G's projected; T5
padded to 77 tokens, no attention mask; context = [L | G] zero-padded to 4096 wide, then T5's
tokens after it; pooled = [L pooled | G pooled], zeros for an absent encoder),
latent_formats.SD3, model_base.SD3 (the pooled vector is the ADM input).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from comfyd.models.clip_tokens import END_TOKEN, ChunkLayout
from comfyd.models.families import _sd3_transformer as transformer
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

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 3.0
T5_MIN_LENGTH = 77
# Widths ComfyUI fills in for an absent encoder, and the width the CLIP context is padded to
# when no T5 is loaded (with one, its width: 4096 for T5-XXL).
CLIP_L_WIDTH, CLIP_G_WIDTH, CONTEXT_WIDTH = 768, 1280, 4096

CLIP_L = EncoderSpec(
    name="l",
    config="text_encoder_l.json",
    layout="hf",
    single_file_prefixes=("text_encoders.clip_l.transformer.",),
    tokenizer={"pad_token": "<|endoftext|>"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=END_TOKEN), -2, norm_intermediate=False, projected_pooled=False),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te1_",
    lora_components=("te", "te1"),
)
CLIP_G = EncoderSpec(
    name="g",
    config="text_encoder_g.json",
    layout="hf",
    single_file_prefixes=("text_encoders.clip_g.transformer.",),
    tokenizer={"pad_token": "!"},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0), -2, norm_intermediate=False, projected_pooled=True),
    diffusers_folders=("text_encoder_2", "tokenizer_2"),
    kohya_prefix="lora_te2_",
    lora_components=("te2",),
    kind="clip_g",
)
T5XXL = EncoderSpec(
    name="t5xxl",
    config="",  # read from the file's shapes (comfyd.models.t5_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.t5xxl.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0, end_token=1), None, norm_intermediate=False, projected_pooled=False),
    diffusers_folders=("text_encoder_3", "tokenizer_3"),
    kohya_prefix="lora_te3_",
    lora_components=("te3",),
    kind="t5",
    min_length=T5_MIN_LENGTH,
)


def model_sampling(shift: float = SHIFT) -> FlowModelSampling:
    """ComfyUI's ModelSamplingDiscreteFlow with SD3's shift (multiplier 1000)."""
    return FlowModelSampling(TimeShiftSchedule(shift=shift, multiplier=1000.0))


def pooled_vector(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The MMDiT's vector input: the conditioning's pooled [CLIP-L | CLIP-G] output."""
    pooled = item.get("pooled_output")
    if pooled is None:
        raise ValueError("SD3 conditioning has no pooled_output (encode the prompt with an SD3 CLIP)")
    return {"pooled": pooled}


def join_sd3(outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's context and pooled vector from the encoders that ran (see the module docstring)."""
    t5 = outputs.get("t5xxl")
    clip_l, clip_g = outputs.get("l"), outputs.get("g")
    context: torch.Tensor | None = None
    pooled: torch.Tensor | None = None
    if clip_l is not None or clip_g is not None:
        l_pooled = clip_l[1] if clip_l is not None else torch.zeros(1, CLIP_L_WIDTH)
        g_pooled = clip_g[1] if clip_g is not None else torch.zeros(1, CLIP_G_WIDTH)
        if clip_l is not None and clip_g is not None:
            cut = min(clip_l[0].shape[1], clip_g[0].shape[1])
            context = torch.cat([clip_l[0][:, :cut], clip_g[0][:, :cut]], dim=-1)
        elif clip_l is not None:
            context = clip_l[0]
        else:
            assert clip_g is not None
            context = F.pad(clip_g[0], (CLIP_L_WIDTH, 0))
        width = t5[0].shape[-1] if t5 is not None else CONTEXT_WIDTH
        context = F.pad(context, (0, width - context.shape[-1]))
        assert l_pooled is not None and g_pooled is not None
        pooled = torch.cat([l_pooled, g_pooled], dim=-1)
    if t5 is not None:
        context = t5[0] if context is None else torch.cat([context, t5[0]], dim=-2)
    if context is None:
        context = torch.zeros(1, 77, CONTEXT_WIDTH)
    if pooled is None:
        pooled = torch.zeros(1, CLIP_L_WIDTH + CLIP_G_WIDTH)
    return context, pooled


class SD3(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._sd3_tiny import write_tiny_sd3

        return write_tiny_sd3(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # all-in-one files load through models.standalone, not the UNet loader

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_sd3_transformer(keys, ""):
            return (
                "looks like an SD3 MMDiT alone: load it with UNETLoader (models/diffusion_models), "
                "not as a checkpoint"
            )
        return None

    def join_encodings(
        self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return join_sd3(outputs)

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.SD3NetworkTranslator:
        # The running network's parameters -> Stability keys (LoRAs and block merges name those).
        return transformer.SD3NetworkTranslator(config, key_prefix)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_sd3_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.SD3Translator(config, prefix), what="SD3 MMDiT",
        )  # fmt: skip
        return transformer.SD3Network(net), model_sampling()


FAMILY = SD3(
    name="sd3",
    encoders=(CLIP_L, CLIP_G, T5XXL),
    latent=LatentFormat(
        channels=16,
        scale_factor=1.5305,
        shift=0.0609,
        rgb_factors=(
            (-0.0922, -0.0175, 0.0749),
            (0.0311, 0.0633, 0.0954),
            (0.1994, 0.0927, 0.0458),
            (0.0856, 0.0339, 0.0902),
            (0.0587, 0.0272, -0.0496),
            (-0.0006, 0.1104, 0.0309),
            (0.0978, 0.0306, 0.0427),
            (-0.0042, 0.1038, 0.1358),
            (-0.0194, 0.0020, 0.0669),
            (-0.0488, 0.0130, -0.0268),
            (0.0922, 0.0988, 0.0951),
            (-0.0278, 0.0524, -0.0542),
            (0.0332, 0.0456, 0.0895),
            (-0.0069, -0.0030, -0.0810),
            (-0.0596, -0.0465, -0.0293),
            (-0.1448, -0.1463, -0.1189),
        ),
        rgb_bias=(0.2394, 0.2135, 0.1925),
    ),
    unet_heads_rule=HeadRule("head_dim", 64),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the MMDiT
    pooled_encoder="g",
    vector_conditioning=pooled_vector,
    context_order=("l", "g", "t5xxl"),
    diffusers_pipeline="StableDiffusion3Pipeline",
    embedding_keys=("clip_l", "clip_g", "t5xxl"),
    vae_name_hints=("sd3",),
    config_dir=CONFIG_DIR / "sdxl",  # CLIP-L and bigG; everything else is read from the files
    clip_types=("sd3",),
    partial_encoders=True,
    network_loras=True,
)
