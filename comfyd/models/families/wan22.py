"""Wan 2.2 TI2V 5B: Wan's video transformer on a 48-channel latent with 16x spatial compression.

Files, as ComfyUI loads them: the transformer alone in `diffusion_models/` (UNETLoader; Wan's
original layout, `_wan_transformer.py`, told from Wan 2.1 by its 48 output channels), UMT5-XXL
through CLIPLoader type wan (the `wan` family's encoder; the conditioning is the same) and
`wan2.2_vae.safetensors` in `vae/` (VAELoader; `_wan22_vae.py`). Sampling: ComfyUI's WAN22_T2V,
the flow table with shift 8 and multiplier 1000, CONST prediction; with a noise mask (the start
image of Wan22ImageToVideoLatent) the kept frames enter the network unnoised and at timestep 0
(`_wan22_transformer.py`). Latent: ComfyUI's Wan22 format, 48 channels normalised per channel,
16x spatial and 4x temporal compression. Wan 2.2's 14B models are Wan 2.1's architecture on the
16-channel latent and load as the `wan` family.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from comfyd.models.families import _wan22_vae as video_vae
from comfyd.models.families import _wan_transformer as transformer
from comfyd.models.families._network import load_transformer
from comfyd.models.families._wan22_transformer import Wan22Network
from comfyd.models.families.base import CONFIG_DIR, HeadRule, LatentFormat, SamplingSpec
from comfyd.models.families.wan import UMT5XXL, Wan, model_sampling
from comfyd.sampling.flow import clean_inpaint
from comfyd.sampling.protocols import VectorConditioning

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

LATENT_CHANNELS = 48
LATENTS_MEAN = (
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
)  # fmt: skip
LATENTS_STD = (
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
)  # fmt: skip
RGB_FACTORS = (
    (0.0119, 0.0103, 0.0046), (-0.1062, -0.0504, 0.0165), (0.0140, 0.0409, 0.0491),
    (-0.0813, -0.0677, 0.0607), (0.0656, 0.0851, 0.0808), (0.0264, 0.0463, 0.0912),
    (0.0295, 0.0326, 0.0590), (-0.0244, -0.0270, 0.0025), (0.0443, -0.0102, 0.0288),
    (-0.0465, -0.0090, -0.0205), (0.0359, 0.0236, 0.0082), (-0.0776, 0.0854, 0.1048),
    (0.0564, 0.0264, 0.0561), (0.0006, 0.0594, 0.0418), (-0.0319, -0.0542, -0.0637),
    (-0.0268, 0.0024, 0.0260), (0.0539, 0.0265, 0.0358), (-0.0359, -0.0312, -0.0287),
    (-0.0285, -0.1032, -0.1237), (0.1041, 0.0537, 0.0622), (-0.0086, -0.0374, -0.0051),
    (0.0390, 0.0670, 0.2863), (0.0069, 0.0144, 0.0082), (0.0006, -0.0167, 0.0079),
    (0.0313, -0.0574, -0.0232), (-0.1454, -0.0902, -0.0481), (0.0714, 0.0827, 0.0447),
    (-0.0304, -0.0574, -0.0196), (0.0401, 0.0384, 0.0204), (-0.0758, -0.0297, -0.0014),
    (0.0568, 0.1307, 0.1372), (-0.0055, -0.0310, -0.0380), (0.0239, -0.0305, 0.0325),
    (-0.0663, -0.0673, -0.0140), (-0.0416, -0.0047, -0.0023), (0.0166, 0.0112, -0.0093),
    (-0.0211, 0.0011, 0.0331), (0.1833, 0.1466, 0.2250), (-0.0368, 0.0370, 0.0295),
    (-0.3441, -0.3543, -0.2008), (-0.0479, -0.0489, -0.0420), (-0.0660, -0.0153, 0.0800),
    (-0.0101, 0.0068, 0.0156), (-0.0690, -0.0452, -0.0927), (-0.0145, 0.0041, 0.0015),
    (0.0421, 0.0451, 0.0373), (0.0504, -0.0483, -0.0356), (-0.0837, 0.0168, 0.0055),
)  # fmt: skip


def _denoise_mask_only(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Any]:
    """The 5B network's vector input: the sampler's noise mask, when there is one."""
    mask = item.get("denoise_mask")
    return {} if mask is None else {"denoise_mask": mask}


class Wan22(Wan):
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        from comfyd.models.families._wan22_tiny import write_tiny_wan22

        return write_tiny_wan22(root)

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        return None  # the wan family's message covers both

    def accepts_diffusion_model(self, shapes: Mapping[str, tuple[int, ...]], prefix: str) -> bool:
        return int(transformer.infer_config(shapes, prefix)["out_channels"]) == LATENT_CHANNELS

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        config = transformer.infer_config(tf.shapes(), prefix)
        if config["in_channels"] != LATENT_CHANNELS or config["image_dim"] is not None:
            raise ValueError(
                f"a Wan 2.2 transformer with {config['in_channels']} input channels"
                f"{' and an image embedder' if config['image_dim'] else ''} is not supported: the TI2V "
                f"5B model takes the {LATENT_CHANNELS}-channel latent alone"
            )
        net = load_transformer(
            tf, plan, weight_dtype, transformer.empty_transformer(config),
            transformer.WanTranslator(list(tf.keys()), prefix), what="Wan 2.2 transformer",
        )  # fmt: skip
        return Wan22Network(net), clean_inpaint(model_sampling())

    def adapt_model_sampling(self, sampling: Any) -> Any:
        # ComfyUI's WAN22 keeps a noise mask's kept region (the TI2V start frame) unnoised,
        # whichever flow schedule a ModelSampling node sets.
        return clean_inpaint(sampling)

    def vector_builder(self, unet_config: Mapping[str, Any]) -> VectorConditioning | None:
        return _denoise_mask_only

    def load_vae(self, tf: TensorFile, plan: Any) -> Any | None:
        from comfyd.models.loader import materialize

        keys = set(tf.keys())
        for prefix in ("", "vae."):
            if video_vae.is_wan22_vae(keys, prefix):
                config = video_vae.infer_config(tf.shapes(), prefix)
                return materialize(
                    video_vae.empty_vae(config), video_vae.Wan22VaeTranslator(list(keys), prefix), tf,
                    plan.device, plan.vae_dtype, what="Wan 2.2 VAE",
                )  # fmt: skip
        return None


FAMILY = Wan22(
    name="wan22",
    encoders=(UMT5XXL,),
    latent=LatentFormat(
        channels=LATENT_CHANNELS,
        scale_factor=1.0,
        downscale=16,
        channel_mean=LATENTS_MEAN,
        channel_std=LATENTS_STD,
        rgb_factors=RGB_FACTORS,
        rgb_bias=(0.0317, -0.0878, -0.1388),
    ),
    unet_heads_rule=HeadRule("head_dim", transformer.HEAD_DIM),
    sampling=SamplingSpec(prediction="eps"),  # unused: flow sampling comes with the transformer
    context_order=("umt5xxl",),
    diffusers_pipeline="WanPipeline",
    embedding_keys=("umt5xxl",),
    vae_name_hints=("wan2.2", "wan22"),
    config_dir=CONFIG_DIR / "sd1",
    refines="wan",
    checkpoint_vae_prefix="vae.",
)
