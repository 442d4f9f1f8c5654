"""Flux.2 ([dev], and the transformer of [klein]): a rectified-flow transformer on ComfyUI's
128-channel latent (the 32-channel VAE latent in 2x2 patches, 1/16 of the image).

Files, as ComfyUI loads them: the transformer alone in `diffusion_models/` (UNETLoader; BFL's
layout, `_flux2_transformer.py`) and `flux2-vae.safetensors` in `vae/` (VAELoader; the LDM
autoencoder with a latent batch norm, `_flux2_vae.py`). Sampling: ComfyUI's Flux2 model config
uses ModelSamplingFlux with shift 2.02 and CONST (flow) prediction; the Flux.2 template samples
with Flux2Scheduler's sigmas instead. Latent: ComfyUI's Flux2 format, scale 1, no shift (the VAE
normalises). dev takes a guidance strength (`guidance_in`; FluxGuidance, 3.5 by default), [klein]
none. The text context is padded with zeros in front to 512 tokens, as ComfyUI's Flux2 model does.
Reference images (ReferenceLatent) join the latent's tokens as diffusers' Flux2Pipeline joins
`image=[...]` (`_flux2_references.py`).

Text encoders (CLIPLoader type "flux2", newer ComfyUI's): Mistral Small 3.x for [dev]
(`models/mistral3_encoder.py`), Qwen3 4B / 8B for [klein] (`models/qwen3_encoder.py`'s model); the
file's keys say which, either one makes the CLIP. Their conditioning, three hidden states per
token: `models/flux2_text.py`. All-in-one Flux.2 checkpoints are refused with a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families import _flux2_transformer as transformer
from comfyd.models.families import _flux2_vae as flux2_vae
from comfyd.models.families._flux2_references import reference_inputs
from comfyd.models.families._network import load_transformer
from comfyd.models.families.base import (
    CONFIG_DIR,
    UNET_PREFIX,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    LatentFormat,
    SamplingSpec,
)
from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling
from comfyd.sampling.vector_conditioning import FLUX_DEFAULT_GUIDANCE

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 2.02
LATENT_CHANNELS = 128
# ComfyUI's Flux2 latent2rgb factors, one row per VAE channel (32): its preview unfolds the 2x2
# patches first. Here each of a channel's four patch positions gets a quarter of its row, so
# the preview is the 2x2 average of ComfyUI's at the latent's own (1/16) resolution.
PATCH_RGB_FACTORS = (
    (0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644), (0.2144, 0.3009, 0.3652),
    (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160), (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109),
    (-0.3527, -0.2712, -0.1666), (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
    (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080), (-0.0939, -0.0008, 0.0186),
    (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127), (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065),
    (0.0128, 0.0101, 0.0142), (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
    (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025), (0.0220, 0.0169, -0.0048),
    (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609), (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614),
)  # fmt: skip
RGB_BIAS = (-0.0329, -0.0718, -0.0851)


def _encoder(
    name: str, kind: str, pad: int, stored: tuple[str, ...], lora: tuple[str, ...], layers: tuple[int, ...]
) -> EncoderSpec:
    return EncoderSpec(
        name=name,
        config="",  # read from the file's shapes
        layout="hf",
        single_file_prefixes=tuple(f"text_encoders.{key}.transformer." for key in stored),
        tokenizer={},
        recipe=EncoderRecipe(
            ChunkLayout(pad_token=pad, end_token=pad), None, norm_intermediate=False, projected_pooled=False
        ),
        diffusers_folders=("text_encoder", "tokenizer"),
        kohya_prefix="lora_te_",
        lora_components=lora,
        kind=kind,
        stacked_layers=layers,
    )


# A Flux.2 CLIP holds one of the two; ComfyUI's all-in-one files store them under these names.
# A "te" LoRA component names one encoder per family; [klein]'s Qwen3 gets none (see Known limits).
MISTRAL3 = _encoder("mistral3_24b", "mistral3", 11, ("mistral3_24b",), ("te",), (10, 20, 30))
QWEN3 = _encoder("qwen3", "qwen3_4b", 151643, ("qwen3_4b", "qwen3_8b"), (), (9, 18, 27))


def _per_patch(rows: tuple[tuple[float, float, float], ...]) -> tuple[tuple[float, float, float], ...]:
    """Channel c's row at each of its 4 patch positions (c * 4 + k, as the VAE folds them), quartered."""
    return tuple((r / 4, g / 4, b / 4) for r, g, b in rows for _ in range(4))


def model_sampling() -> FlowModelSampling:
    return FlowModelSampling(ExpTimeShiftSchedule(shift=SHIFT))


def guidance_only(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
    """The guidance strength of a guidance-distilled Flux.2 (no pooled vector in Flux.2)."""
    guidance = item.get("guidance", FLUX_DEFAULT_GUIDANCE)
    if guidance is None:
        return {}
    return {"guidance": torch.tensor([float(guidance)], dtype=torch.float32)}


def guidance_and_references(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
    """The guidance strength and the entry's reference images (ReferenceLatent), as the network reads them."""
    return {**guidance_only(item, dims), **reference_inputs(item, LATENT_CHANNELS)}


class Flux2(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._flux2_tiny import write_tiny_flux2

        return write_tiny_flux2(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # the parts load through the split loaders (models.standalone)

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_flux2_transformer(keys, UNET_PREFIX):
            return (
                "looks like an all-in-one Flux.2 checkpoint, which comfyd does not load yet: load the "
                "transformer with UNETLoader and the VAE with VAELoader"
            )
        if transformer.is_flux2_transformer(keys, ""):
            return "looks like a Flux.2 transformer alone: load it with UNETLoader (models/diffusion_models)"
        if flux2_vae.is_flux2_vae(keys):
            return "looks like a Flux.2 VAE: load it with VAELoader (models/vae)"
        return None

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        # Transformer files only: an all-in-one file's VAE would need the batch-norm loader, which
        # the split-family checkpoint path does not call (near_miss says so instead).
        return "" if transformer.is_flux2_transformer(keys, "") else None

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.Flux2NetworkTranslator:
        # The running (diffusers) parameters -> BFL keys: LoRAs name those (`diffusion_model.*`,
        # kohya `lora_unet_*`) or diffusers' own (`transformer.*`); a fused qkv's change lands on
        # to_q / to_k / to_v's rows, the final modulation's on its swapped halves.
        return transformer.Flux2NetworkTranslator(config, key_prefix)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.Flux2Translator(config, prefix), what="Flux.2 transformer",
        )  # fmt: skip
        return transformer.Flux2Network(net), model_sampling()

    def load_vae(self, tf: TensorFile, plan: Any) -> Any | None:
        from comfyd.models.loader import materialize

        keys = set(tf.keys())
        for prefix in ("", "vae."):
            if flux2_vae.is_flux2_vae(keys, prefix):
                config = flux2_vae.infer_config(tf.shapes(), prefix)
                vae = materialize(
                    flux2_vae.empty_vae(config), flux2_vae.Flux2VaeTranslator(config, keys, prefix), tf,
                    plan.device, plan.vae_dtype, what="Flux.2 VAE",
                )  # fmt: skip
                return flux2_vae.Flux2Autoencoder(vae)
        return None


FAMILY = Flux2(
    name="flux2",
    encoders=(MISTRAL3, QWEN3),
    partial_encoders=True,
    clip_types=("flux2",),
    latent=LatentFormat(
        channels=LATENT_CHANNELS, scale_factor=1.0, downscale=16,
        rgb_factors=_per_patch(PATCH_RGB_FACTORS), rgb_bias=RGB_BIAS,
    ),  # fmt: skip
    unet_heads_rule=HeadRule("head_dim", 128),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    vector_conditioning=guidance_and_references,
    diffusers_pipeline="Flux2Pipeline",
    embedding_keys=(),
    vae_name_hints=("flux2", "flux.2"),
    config_dir=CONFIG_DIR / "sd1",
    checkpoint_vae_prefix="vae.",
    network_loras=True,
)
