"""HiDream-I1 (full, dev, fast): a sparse-MoE transformer on Flux's 16-channel latent, with four
text encoders: CLIP-L and CLIP-G (pooled only), T5-XXL and Llama-3.1-8B (every layer).

Files, as ComfyUI 0.3.64 loads them: the transformer alone through UNETLoader
(`_hidream_transformer.py`), the encoders from `text_encoders/` through QuadrupleCLIPLoader (any
order), or any subset through CLIPLoader / DualCLIPLoader type hidream; Flux's VAE (ae) through
VAELoader. A Llama file needs Llama 3's tokenizer.json in `llama_tokenizer/` beside it
(`llama_encoder`), as for HunyuanVideo.
ComfyUI: comfy/text_encoders/hidream.py (CLIP-L and CLIP-G: projected pooled outputs of the
usual 77-token chunks; T5-XXL: the first 128 tokens, padded to 128, padding masked; Llama: every
layer, `hidream_llama`; an absent encoder is zeros: pooled [1, 768] / [1, 1280], T5
[1, 128, 4096], Llama [1, 32, 1, 4096]); context = T5's output, pooled = [L | G], the Llama stack
travels as `conditioning_llama3`. supported_models.HiDream: flow prediction, shift 1 (the shift
3.0 it names is overwritten), multiplier 1000; workflows set 3.0 (dev, fast) or 6.0 (full) with
ModelSamplingSD3. latent_formats.Flux. Compute dtype: bf16 or fp32, never fp16 (ComfyUI's
supported_inference_dtypes for HiDream), as Z-Image.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from comfyd.models.clip_tokens import END_TOKEN, ChunkLayout
from comfyd.models.families import _hidream_transformer as transformer
from comfyd.models.families import sd3
from comfyd.models.families._network import transformer_prefix
from comfyd.models.families.base import (
    CONFIG_DIR,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    SamplingSpec,
)
from comfyd.models.families.flux import FAMILY as FLUX
from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 1.0
T5_LENGTH = 128
LLAMA_KEY = "conditioning_llama3"
# What ComfyUI puts in place of an absent encoder (full-size widths).
CLIP_L_WIDTH, CLIP_G_WIDTH, T5_WIDTH, LLAMA_WIDTH, LLAMA_LAYERS = 768, 1280, 4096, 4096, 32

# SD3's three encoders, driven as ComfyUI's HiDream drives them: CLIP-L projected and pooled,
# T5 cut to its first 128-token chunk and masked (the mask stays out of the conditioning).
CLIP_L = replace(
    sd3.CLIP_L,
    recipe=EncoderRecipe(ChunkLayout(pad_token=END_TOKEN), None, norm_intermediate=True, projected_pooled=True),
)
CLIP_G = sd3.CLIP_G
T5XXL = replace(
    sd3.T5XXL, min_length=T5_LENGTH, attention_mask=True, conditioning_mask=False, max_length=T5_LENGTH
)
LLAMA = EncoderSpec(
    name="llama",
    config="",  # read from the file's shapes (comfyd.models.llama_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.llama.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(ChunkLayout(pad_token=0), None, norm_intermediate=False, projected_pooled=False),
    diffusers_folders=("text_encoder_4", "tokenizer_4"),
    kohya_prefix="lora_te4_",
    lora_components=("te4",),
    kind="llama",
    all_layers=True,
)


def model_sampling(shift: float = SHIFT) -> FlowModelSampling:
    """ComfyUI's ModelSamplingDiscreteFlow as HiDream gets it (shift 1, multiplier 1000)."""
    return FlowModelSampling(TimeShiftSchedule(shift=shift, multiplier=1000.0))


def join_hidream(outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(T5 context, [CLIP-L | CLIP-G] pooled), zeros for absent encoders (module docstring)."""
    clip_l, clip_g, t5 = outputs.get("l"), outputs.get("g"), outputs.get("t5xxl")
    l_pooled = clip_l[1] if clip_l is not None and clip_l[1] is not None else torch.zeros(1, CLIP_L_WIDTH)
    g_pooled = clip_g[1] if clip_g is not None and clip_g[1] is not None else torch.zeros(1, CLIP_G_WIDTH)
    context = t5[0] if t5 is not None else torch.zeros(1, T5_LENGTH, T5_WIDTH)
    return context, torch.cat([l_pooled, g_pooled], dim=-1)


def llama_stack(outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
    llama = outputs.get("llama")
    return llama[0] if llama is not None else torch.zeros(1, LLAMA_LAYERS, 1, LLAMA_WIDTH)


def hidream_inputs(item: dict[str, Any], dims: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """The transformer's extra inputs from one conditioning entry: pooled vector, Llama stack."""
    pooled, llama = item.get("pooled_output"), item.get(LLAMA_KEY)
    if pooled is None or llama is None:
        raise ValueError(
            "HiDream conditioning needs a pooled output and the Llama layers (encode the prompt with a "
            "HiDream CLIP: QuadrupleCLIPLoader, or CLIPLoader / DualCLIPLoader type hidream)"
        )
    return {"pooled": pooled, "llama": llama}


class HiDream(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._hidream_tiny import write_tiny_hidream

        return write_tiny_hidream(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # the transformer loads through UNETLoader

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_hidream_transformer(keys, ""):
            return (
                "looks like a HiDream transformer alone: load it with UNETLoader (models/diffusion_models), "
                "not as a checkpoint"
            )
        return None

    def join_encodings(
        self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        return join_hidream(outputs)

    def conditioning_extras(self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]) -> dict[str, Any]:
        return {LLAMA_KEY: llama_stack(outputs)}

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.HiDreamTranslator:
        # The running network's parameters -> the stored names LoRAs use (the same, under a prefix):
        # ComfyUI maps kohya `lora_unet_*`, `diffusion_model.*`, SimpleTuner's `transformer.*` and
        # `lycoris_*` onto them.
        return transformer.HiDreamTranslator(key_prefix)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_hidream_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        from comfyd.models.families._network import load_transformer
        from comfyd.models.families._z_image_transformer import compute_dtype

        config = transformer.infer_config(tf.shapes(), prefix)
        # ComfyUI lists bf16 and fp32 only for HiDream: an fp16 plan runs in bf16 (else fp32).
        dtype = compute_dtype(plan.unet_dtype, plan.device)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config), transformer.HiDreamTranslator(prefix),
            what="HiDream transformer", dtype=dtype,
        )  # fmt: skip
        network = transformer.HiDreamNetwork(net)
        network.compute_dtype = dtype
        return network, model_sampling()


FAMILY = HiDream(
    name="hidream",
    encoders=(CLIP_L, CLIP_G, T5XXL, LLAMA),
    latent=FLUX.latent,  # latent_formats.Flux
    unet_heads_rule=HeadRule("head_dim", transformer.HEAD_DIM),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    vector_conditioning=hidream_inputs,
    context_order=("t5xxl",),
    diffusers_pipeline="HiDreamImagePipeline",
    embedding_keys=("clip_l", "clip_g", "t5xxl", "llama"),
    config_dir=CONFIG_DIR / "sdxl",  # CLIP-L and bigG; everything else is read from the files
    clip_types=("hidream",),
    partial_encoders=True,
    network_loras=True,
)
