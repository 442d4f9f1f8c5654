"""Z-Image (Turbo): a single-stream flow-matching DiT on Flux's 16-channel latent, prompted by Qwen3-4B.

Files, as ComfyUI loads them (support added after 0.3.64: supported_models.ZImage,
text_encoders/z_image.py, ldm/lumina/model.py): the transformer alone in `diffusion_models/`
(UNETLoader, z_image_turbo_bf16.safetensors; `_z_image_transformer.py`, recognised by its pad
tokens next to the NextDiT keys), `qwen_3_4b.safetensors` in `text_encoders/` (CLIPLoader type
"lumina2", the type ComfyUI 0.3.64 already lists and Z-Image's template uses;
`models/qwen3_encoder.py`) and Flux's `ae.safetensors` in `vae/` (VAELoader).

Sampling: CONST (FLUX model type) on the plain time shift, shift 3 and multiplier 1 unless a
ModelSampling node replaces it (the Turbo template sets ModelSamplingAuraFlow 3, the same table).
Latent: Flux's format (scale 0.3611, shift 0.1159). Compute dtype: bf16 or fp32, never fp16 (as
ComfyUI's supported_inference_dtypes for Z-Image): `_z_image_transformer.compute_dtype`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families import _z_image_transformer as transformer
from comfyd.models.families._network import load_transformer, transformer_prefix
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

SHIFT = 3.0
PAD = 151643

QWEN3_4B = EncoderSpec(
    name="qwen3_4b",
    config="",  # read from the file's shapes (comfyd.models.qwen3_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.qwen3_4b.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(
        ChunkLayout(pad_token=PAD, end_token=PAD), None, norm_intermediate=False, projected_pooled=False
    ),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te",),
    kind="qwen3_4b",
)


def model_sampling() -> FlowModelSampling:
    return FlowModelSampling(TimeShiftSchedule(shift=SHIFT, multiplier=1.0))


class ZImage(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._z_image_tiny import write_tiny_z_image

        return write_tiny_z_image(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # the parts load through the split loaders (models.standalone)

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_z_image_transformer(keys, ""):
            return "looks like a Z-Image transformer alone: load it with UNETLoader (models/diffusion_models)"
        return None

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.ZImageTranslator:
        # The running network's parameters -> the stored keys (LoRAs name those or diffusers').
        return transformer.ZImageTranslator(config, key_prefix)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_z_image_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        dtype = transformer.compute_dtype(plan.unet_dtype, plan.device)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.ZImageTranslator(config, prefix, transformer.is_diffusers_layout(set(tf.keys()), prefix)),
            what="Z-Image transformer", dtype=dtype,
        )  # fmt: skip
        network = transformer.ZImageNetwork(net)
        network.compute_dtype = dtype
        return network, model_sampling()


FAMILY = ZImage(
    name="z_image",
    encoders=(QWEN3_4B,),
    latent=FLUX.latent,
    unet_heads_rule=HeadRule("head_dim", 128),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    context_order=("qwen3_4b",),
    diffusers_pipeline="ZImagePipeline",
    embedding_keys=("qwen3_4b",),
    vae_name_hints=("z_image", "z-image"),
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("lumina2",),
    checkpoint_vae_prefix="vae.",
    network_loras=True,
)
