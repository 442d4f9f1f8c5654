"""Chroma: Flux's architecture with one modulation approximator instead of per-block modulation,
prompted by T5-XXL alone, on Flux's 16-channel latent.

Files, as ComfyUI 0.3.64 loads them: the transformer alone in `diffusion_models/` (UNETLoader;
`_chroma_transformer.py`), a T5-XXL in `text_encoders/` (CLIPLoader, type chroma) and Flux's
`ae.safetensors` in `vae/`. ComfyUI: comfy/supported_models.py Chroma (Flux's latent format),
comfy/text_encoders/pixart_t5.py (T5 tokens not padded:
min length 1), model_base.Chroma (a Flux-type model: ModelSamplingFlux, shift 1.15; guidance 0
unless FluxGuidance sets one).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.families import _chroma_transformer as transformer
from comfyd.models.families._network import load_transformer, transformer_prefix
from comfyd.models.families.base import CONFIG_DIR, Family, HeadRule, SamplingSpec
from comfyd.models.families.flux import DEV_SHIFT, T5XXL
from comfyd.models.families.flux import FAMILY as FLUX
from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling
from comfyd.sampling.vector_conditioning import guidance_only

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

# PixArt's T5 tokenization: the prompt and its end token, no padding.
# Weighted tokens are measured against an empty prompt of pad tokens only (PixArt's T5 model).
T5XXL_UNPADDED = replace(T5XXL, min_length=1, diffusers_folders=("text_encoder", "tokenizer"),
                         kohya_prefix="lora_te1_", lora_components=("te", "te1"), empty_prompt_end=False)  # fmt: skip


def model_sampling() -> FlowModelSampling:
    """ComfyUI samples Chroma as a Flux-type model: the Flux time shift at its default 1.15 (the
    model's sampling settings name no shift)."""
    return FlowModelSampling(ExpTimeShiftSchedule(shift=DEV_SHIFT))


class Chroma(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._chroma_tiny import write_tiny_chroma

        return write_tiny_chroma(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # all-in-one files load through models.standalone, not the UNet loader

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_chroma_transformer(keys, ""):
            return "looks like a Chroma transformer alone: load it with UNETLoader (models/diffusion_models)"
        return None

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.ChromaNetworkTranslator:
        return transformer.ChromaNetworkTranslator(config, key_prefix)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_chroma_transformer)

    def load_diffusion_model(self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.ChromaTranslator(config, prefix), what="Chroma transformer",
        )  # fmt: skip
        return transformer.ChromaNetwork(net), model_sampling()


FAMILY = Chroma(
    name="chroma",
    encoders=(T5XXL_UNPADDED,),
    latent=FLUX.latent,
    unet_heads_rule=HeadRule("head_dim", 128),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    vector_conditioning=guidance_only,
    context_order=("t5xxl",),
    diffusers_pipeline="ChromaPipeline",
    embedding_keys=("t5xxl",),
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("chroma",),
    checkpoint_vae_prefix="vae.",
    network_loras=True,
)
