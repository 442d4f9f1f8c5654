"""Lumina Image 2.0 (and Neta Lumina, the same network): a NextDiT on Flux's 16-channel latent,
prompted by Gemma-2-2B.

Files, as ComfyUI 0.3.64 loads them (comfy/supported_models.py Lumina2, model_detection.py's
`cap_embedder.1.weight` branch, model_base.Lumina2):
- the all-in-one `lumina_2.safetensors` through CheckpointLoaderSimple: the transformer under
  `model.diffusion_model.` (`_lumina2_transformer.py`), Gemma-2-2B under
  `text_encoders.gemma2_2b.transformer.` with its SentencePiece model as
  `text_encoders.spiece_model`, Flux's autoencoder under `vae.`;
- or the parts: the transformer alone in `diffusion_models/` (UNETLoader), `gemma_2_2b*.safetensors`
  in `text_encoders/` (CLIPLoader type "lumina2", which also builds Z-Image's Qwen3: the file's
  keys decide) and Flux's `ae.safetensors` in `vae/`.
Text: `models/gemma2_encoder.py`. Sampling: CONST (ComfyUI's FLOW type) on the plain time shift,
shift 6 and multiplier 1 unless ModelSamplingAuraFlow replaces it. Latent: Flux's format. Compute
dtype: bf16 or fp32, never fp16 (ComfyUI's supported_inference_dtypes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families import _lumina2_transformer as transformer
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
from comfyd.models.gemma2_encoder import BEGIN_TOKEN, PAD_TOKEN
from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 6.0

GEMMA2_2B = EncoderSpec(
    name="gemma2_2b",
    config="",  # read from the file's shapes (comfyd.models.gemma2_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.gemma2_2b.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(
        ChunkLayout(pad_token=PAD_TOKEN, end_token=BEGIN_TOKEN),
        None,
        norm_intermediate=False,
        projected_pooled=False,
    ),  # fmt: skip
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te",),
    kind="gemma2_2b",
)


def model_sampling(shift: float = SHIFT) -> FlowModelSampling:
    return FlowModelSampling(TimeShiftSchedule(shift=shift, multiplier=1.0))


class Lumina2(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._lumina2_tiny import write_tiny_lumina2

        return write_tiny_lumina2(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # all-in-one files load through models.standalone, not the UNet loader

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_lumina2_transformer(keys, ""):
            return (
                "looks like a Lumina 2 transformer alone: load it with UNETLoader (models/diffusion_models)"
            )
        return None

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.Lumina2Translator:
        # The running (diffusers) parameters -> the stored names ComfyUI's LoRA keys use
        # (`lora_unet_*`, `diffusion_model.*`); a fused qkv's change lands on to_q / to_k / to_v's rows.
        return transformer.Lumina2Translator(config, key_prefix)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_lumina2_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        dtype = transformer.compute_dtype(plan.unet_dtype, plan.device)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.Lumina2Translator(config, prefix), what="Lumina 2 transformer", dtype=dtype,
        )  # fmt: skip
        transformer.comfyui_qk_eps(net, dtype)
        network = transformer.Lumina2Network(net)
        network.compute_dtype = dtype
        return network, model_sampling()


FAMILY = Lumina2(
    name="lumina2",
    encoders=(GEMMA2_2B,),
    latent=FLUX.latent,
    unet_heads_rule=HeadRule("head_dim", 96),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    context_order=("gemma2_2b",),
    diffusers_pipeline="Lumina2Pipeline",
    embedding_keys=("gemma2_2b",),
    vae_name_hints=("lumina",),
    config_dir=CONFIG_DIR / "sd1",
    clip_types=("lumina2",),
    checkpoint_vae_prefix="vae.",
    network_loras=True,
)
