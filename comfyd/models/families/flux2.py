"""Flux.2 ([dev], and the transformer of [klein]): a rectified-flow transformer on ComfyUI's
128-channel latent (the 32-channel VAE latent in 2x2 patches, 1/16 of the image).

Files, as ComfyUI loads them: the transformer alone in `diffusion_models/` (UNETLoader; BFL's
layout, `_flux2_transformer.py`) and `flux2-vae.safetensors` in `vae/` (VAELoader; the LDM
autoencoder with a latent batch norm, `_flux2_vae.py`). Sampling: ComfyUI's Flux2 model config
uses ModelSamplingFlux with shift 2.02 and CONST (flow) prediction; the Flux.2 template samples
with Flux2Scheduler's sigmas instead. Latent: ComfyUI's Flux2 format, scale 1, no shift (the VAE
normalises). dev takes a guidance strength (`guidance_in`; FluxGuidance, 3.5 by default), [klein]
none. The text context is padded with zeros in front to 512 tokens, as ComfyUI's Flux2 model does.

Not here yet: the text encoders (Mistral Small 3.x for [dev], Qwen3 for [klein]), so CLIPLoader
type flux2 is refused with a message; conditioning must come from elsewhere. All-in-one Flux.2
checkpoints are refused with a message too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from comfyd.models.families import _flux2_transformer as transformer
from comfyd.models.families import _flux2_vae as flux2_vae
from comfyd.models.families._network import storage_dtype, store_weights
from comfyd.models.families.base import CONFIG_DIR, UNET_PREFIX, Family, HeadRule, LatentFormat, SamplingSpec
from comfyd.sampling.flow import ExpTimeShiftSchedule, FlowModelSampling
from comfyd.sampling.vector_conditioning import FLUX_DEFAULT_GUIDANCE

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

SHIFT = 2.02
LATENT_CHANNELS = 128


def model_sampling() -> FlowModelSampling:
    return FlowModelSampling(ExpTimeShiftSchedule(shift=SHIFT))


def guidance_only(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
    """The guidance strength of a guidance-distilled Flux.2 (no pooled vector in Flux.2)."""
    guidance = item.get("guidance", FLUX_DEFAULT_GUIDANCE)
    if guidance is None:
        return {}
    return {"guidance": torch.tensor([float(guidance)], dtype=torch.float32)}


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

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        from comfyd.models.loader import materialize

        storage = storage_dtype(weight_dtype)
        config = transformer.infer_config(tf.shapes(), prefix)
        net = materialize(
            transformer.empty_transformer(config), transformer.Flux2Translator(config, prefix), tf,
            plan.device, plan.unet_dtype, what="Flux.2 transformer",
        )  # fmt: skip
        store_weights(net, storage, plan.unet_dtype)
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
    encoders=(),
    latent=LatentFormat(channels=LATENT_CHANNELS, scale_factor=1.0, downscale=16),
    unet_heads_rule=HeadRule("head_dim", 128),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    vector_conditioning=guidance_only,
    diffusers_pipeline="Flux2Pipeline",
    embedding_keys=(),
    vae_name_hints=("flux2", "flux.2"),
    config_dir=CONFIG_DIR / "sd1",
    checkpoint_vae_prefix="vae.",
)
