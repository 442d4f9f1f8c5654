"""AuraFlow (fal's aura_flow_0.x): an MMDiT on SDXL's 4-channel latent, prompted by Pile-T5-XL.

Files, as ComfyUI 0.3.64 loads them: the all-in-one checkpoint through CheckpointLoaderSimple
(`model.diffusion_model.*` in fal's layout, `_auraflow_transformer.py`; `text_encoders.pile_t5xl.
transformer.*` the encoder in transformers T5 names with a relative-attention table in every block,
as UMT5; `vae.*` SDXL's autoencoder in LDM names).
ComfyUI: comfy/supported_models.py AuraFlow (flow, multiplier 1, shift 1.73; SDXL's latent format),
comfy/text_encoders/aura_t5.py (Pile-T5: end token 2, pad token 1, padded to 256 tokens, the
padding masked out of attention and zeroed in the output; no pooled output), model_base.AuraFlow.
The Pile-T5 SentencePiece model: ComfyUI ships it inside its source; comfyd does not ship it and
reads it, as for Wan's UMT5, from a `spiece_model` uint8 tensor stored with the encoder
(`text_encoders.pile_t5xl.transformer.spiece_model`); a checkpoint without one is refused with that message.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.families import _auraflow_transformer as transformer
from comfyd.models.families._network import load_transformer, transformer_prefix
from comfyd.models.families.base import (
    CONFIG_DIR,
    EncoderRecipe,
    EncoderSpec,
    Family,
    HeadRule,
    SamplingSpec,
)
from comfyd.models.families.sdxl import FAMILY as SDXL
from comfyd.sampling.flow import FlowModelSampling, TimeShiftSchedule

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 1.73
END_TOKEN, PAD_TOKEN, MIN_LENGTH = 2, 1, 256

PILE_T5XL = EncoderSpec(
    name="pile_t5xl",
    config="",  # read from the file's shapes (comfyd.models.umt5_encoder)
    layout="hf",
    single_file_prefixes=("text_encoders.pile_t5xl.transformer.",),
    tokenizer={},
    recipe=EncoderRecipe(
        ChunkLayout(pad_token=PAD_TOKEN, end_token=END_TOKEN),
        None,
        norm_intermediate=False,
        projected_pooled=False,
    ),
    diffusers_folders=("text_encoder", "tokenizer"),
    kohya_prefix="lora_te_",
    lora_components=("te",),
    kind="umt5",  # a relative-attention table in every block, masked and zeroed padding
    min_length=MIN_LENGTH,
    sequence=(END_TOKEN, PAD_TOKEN, MIN_LENGTH),
)


def model_sampling(shift: float = SHIFT) -> FlowModelSampling:
    """ComfyUI's ModelSamplingDiscreteFlow with AuraFlow's shift and multiplier 1."""
    return FlowModelSampling(TimeShiftSchedule(shift=shift, multiplier=1.0))


class AuraFlow(Family):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._auraflow_tiny import write_tiny_auraflow

        return write_tiny_auraflow(root)

    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        return None  # all-in-one files load through models.standalone, not the UNet loader

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        if transformer.is_auraflow_transformer(keys, ""):
            return "looks like an AuraFlow MMDiT alone: load it with UNETLoader (models/diffusion_models)"
        return None

    def unet_key_map(self, config: Any, key_prefix: str = "") -> transformer.AuraFlowNetworkTranslator:
        return transformer.AuraFlowNetworkTranslator(config, key_prefix)

    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        return transformer_prefix(keys, transformer.is_auraflow_transformer)

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.AuraFlowTranslator(config, prefix), what="AuraFlow MMDiT",
        )  # fmt: skip
        return transformer.AuraFlowNetwork(net), model_sampling()


FAMILY = AuraFlow(
    name="auraflow",
    encoders=(PILE_T5XL,),
    latent=SDXL.latent,
    unet_heads_rule=HeadRule("fixed_heads", transformer.HEADS),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the MMDiT
    context_order=("pile_t5xl",),
    diffusers_pipeline="AuraFlowPipeline",
    embedding_keys=("pile_t5xl",),
    vae_name_hints=("aura",),
    config_dir=CONFIG_DIR / "sd1",
    checkpoint_vae_prefix="vae.",
    network_loras=True,
)
