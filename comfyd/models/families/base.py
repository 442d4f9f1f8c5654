"""What a model family declares: the `Family` type every module under `families/` instantiates.

A family is one architecture (SD1.x, SD2.x, SDXL, later Flux, Wan ...). Its module builds one
`Family` (or a subclass overriding the hooks below) and names it `FAMILY`; the registry
(`comfyd.models.families`) finds it. Shared code (detect, loader, text encoding, LoRA, the tiny
writer, the sampler) asks the family instead of branching on its name.

Declared data:
- `encoders`: its text encoders, where each is stored (single file, diffusers folder, LoRA
  prefixes) and how ComfyUI drives it (`EncoderSpec`, `EncoderRecipe`);
- `latent`: latent channels, scale factor and shift, latent2rgb preview factors (`LatentFormat`);
- `sampling`: the noise schedule and prediction type (`SamplingSpec`);
- `unet_heads`: the attention-head rule (fixed heads, or channels // head width);
- `pooled_encoder` / `vector_conditioning`: the UNet's vector (ADM) input, if it has one;
- diffusers pipeline class and index extras; the file keys of its textual-inversion embeddings.
Hooks (methods): recognising single files and diffusers folders, the prediction rule, the key
maps between module parameter names and stored keys (default: the LDM/SGM layout of
`keymap.py`), and the family's changes to the tiny test architecture.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from comfyd.models.clip_tokens import ChunkLayout
from comfyd.models.keymap import (
    HfClipTranslator,
    OpenClipTranslator,
    Translator,
    unet_translator,
    vae_translator,
)
from comfyd.sampling.model_sampling import DiscreteModelSampling
from comfyd.sampling.protocols import VectorConditioning

if TYPE_CHECKING:
    from comfyd.models.tensorfile import TensorFile

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
LABEL_EMB_KEY = f"{UNET_PREFIX}label_emb.0.0.weight"

# Reads a diffusers component's config.json: (folder, component) -> dict, {} when absent.
ConfigReader = Callable[[Path, str], dict[str, Any]]


def is_text_time_pipeline(folder: Path, read_config: ConfigReader) -> bool:
    """A second text encoder and a UNet taking size conditioning (the SDXL pipeline layout)."""
    return (folder / "text_encoder_2").is_dir() and (
        read_config(folder, "unet").get("addition_embed_type") == "text_time"
    )


@dataclass(frozen=True)
class EncoderRecipe:
    """How ComfyUI drives one text encoder of a model family."""

    layout: ChunkLayout
    default_layer: int | None  # None: last layer; -2: penultimate (the family's default)
    norm_intermediate: bool  # final_layer_norm on an intermediate layer's output
    projected_pooled: bool  # pooled output through text_projection


@dataclass(frozen=True)
class EncoderSpec:
    """One text encoder of a family: its files, its tokenizer and how it is driven."""

    name: str  # "l" | "h" | "g": also the key of embedding vectors meant for it
    config: str  # shipped transformers config file in the family's config folder
    layout: str  # stored names: "hf" (transformers) | "openclip"
    # Where a single-file checkpoint stores it; the first is the canonical spelling (written by
    # the tiny writer), the others are accepted alternatives.
    single_file_prefixes: tuple[str, ...]
    tokenizer: Mapping[str, Any]  # transformers CLIPTokenizer options (pad token)
    recipe: EncoderRecipe
    diffusers_folders: tuple[str, str]  # (text encoder subfolder, tokenizer subfolder)
    kohya_prefix: str  # LoRA key prefix kohya scripts write for it ("lora_te_", "lora_te2_")
    lora_components: tuple[str, ...]  # normalised LoRA components that patch it (see lora.py)
    kind: str = "clip"  # "clip" (CLIP text model) | "t5" (T5 encoder, comfyd.models.t5_encoder)
    # T5 kinds: prompts are padded with the pad token up to this many tokens (Flux 256, SD3 77,
    # LTX-Video 128), and whether the padding is masked out of the encoder's attention and the
    # mask travels with the conditioning (LTX-Video).
    min_length: int = 256
    attention_mask: bool = False
    # UMT5-layout kinds other than Wan's UMT5 (AuraFlow's Pile-T5): (end token, pad token,
    # minimum length) of its sequences; None: UMT5's own (1, 0, 512).
    sequence: tuple[int, int, int] | None = None
    # With attention_mask: whether the mask also travels with the conditioning (HiDream: no).
    conditioning_mask: bool = True
    # T5 kinds: ComfyUI's chunk length, of which the first chunk is kept (HiDream: 128,
    # `t5_first_chunk`); None: one sequence, never cut.
    max_length: int | None = None
    # T5 kinds: the empty prompt weighted tokens are measured against opens with the end token;
    # False: pad tokens only (ComfyUI's PixArt T5, which Chroma uses).
    empty_prompt_end: bool = True
    # Llama kind: HiDream's plain sequence and every layer's output (`hidream_llama`), not
    # HunyuanVideo's template and third-last layer.
    all_layers: bool = False
    # Decoder-LLM kinds: Flux.2's templates and these layers' hidden states side by side per
    # token (`flux2_text`); empty: the kind's own encoding.
    stacked_layers: tuple[int, ...] = ()

    @property
    def peft_prefix(self) -> str:
        """diffusers / peft LoRAs name text encoders by their pipeline subfolder."""
        return self.diffusers_folders[0] + "."


@dataclass(frozen=True)
class LatentFormat:
    """The latent space: what the VAE produces and how the sampler sees it (ComfyUI latent_formats)."""

    channels: int
    scale_factor: float  # sampler space = (vae latent - shift) * scale_factor
    shift: float = 0.0
    downscale: int = 8  # pixels per latent cell
    # latent2rgb preview: one RGB row per channel, plus a bias (None: no cheap preview).
    rgb_factors: tuple[tuple[float, float, float], ...] | None = None
    rgb_bias: tuple[float, float, float] | None = None
    # Per-channel normalisation of video latents (Wan): sampler space = (latent - mean) / std
    # * scale_factor, over [B, C, T, H, W]. None: the scalar shift and scale alone.
    channel_mean: tuple[float, ...] | None = None
    channel_std: tuple[float, ...] | None = None

    def sampler_scale(self) -> float | torch.Tensor:
        """What a latent is multiplied by on its way into the sampler (after the shift)."""
        if self.channel_std is None:
            return self.scale_factor
        return self.scale_factor / torch.tensor(self.channel_std).view(1, -1, 1, 1, 1)

    def sampler_shift(self) -> float | torch.Tensor:
        if self.channel_mean is None:
            return self.shift
        return torch.tensor(self.channel_mean).view(1, -1, 1, 1, 1)


@dataclass(frozen=True)
class SamplingSpec:
    """Model sampling: the discrete beta schedule and the default prediction type."""

    prediction: str = "eps"  # "eps" | "v"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    timesteps: int = 1000

    def model_sampling(self, prediction: str | None = None) -> DiscreteModelSampling:
        return DiscreteModelSampling(
            prediction or self.prediction, self.beta_start, self.beta_end, self.timesteps
        )


@dataclass(frozen=True)
class HeadRule:
    """UNet attention heads per block: a fixed count, or channels // head width (at least 1)."""

    kind: str  # "fixed_heads" | "head_dim"
    value: int


@dataclass(frozen=True)
class Family:
    name: str
    encoders: tuple[EncoderSpec, ...]
    latent: LatentFormat
    unet_heads_rule: HeadRule
    sampling: SamplingSpec = field(default_factory=SamplingSpec)
    # The encoder whose projected pooled output feeds the UNet's vector input (SDXL's "g"); a
    # family with one encoder passes that encoder's pooled output on as is.
    pooled_encoder: str | None = None
    # Builds the UNet's vector input (`added_cond_kwargs`) from one conditioning entry.
    vector_conditioning: VectorConditioning | None = None
    # The order encoder outputs are concatenated in on the feature axis (several encoders).
    context_order: tuple[str, ...] = ()
    diffusers_pipeline: str = "StableDiffusionPipeline"
    diffusers_index_extras: Mapping[str, Any] = field(default_factory=dict)
    # Tensor names of its textual-inversion files as the tiny writer produces them.
    embedding_keys: tuple[str, ...] = ("emb_params",)
    # Prediction types the tiny writer can mark a checkpoint with (detect reads the mark back).
    tiny_predictions: tuple[str, ...] = ("eps",)
    # A family this one specialises: when both recognise a file, this one wins.
    refines: str | None = None
    # Lower-case substrings of a standalone VAE's file name that suggest this family.
    vae_name_hints: tuple[str, ...] = ()
    # Where its single files keep a CLIP vision tower (unCLIP's image encoder), if they do.
    clip_vision_prefix: str | None = None
    config_dir: Path | None = None
    # The `type` values of ComfyUI's CLIPLoader / DualCLIPLoader that build this family's CLIP.
    clip_types: tuple[str, ...] = ()
    # Where an all-in-one checkpoint of a split-loader family (Flux) keeps its VAE.
    checkpoint_vae_prefix: str = VAE_PREFIX
    # Whether LoRAs map onto its diffusion-model network (via unet_key_map) and standalone CLIPs.
    network_loras: bool = False
    # Whether a CLIP of this family may hold any non-empty subset of its encoders (SD3).
    partial_encoders: bool = False

    # --- declared data, derived --------------------------------------------------------------
    @property
    def configs(self) -> Path:
        return self.config_dir if self.config_dir is not None else CONFIG_DIR / self.name

    @property
    def encoder_names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.encoders)

    def encoder(self, name: str) -> EncoderSpec:
        for spec in self.encoders:
            if spec.name == name:
                return spec
        raise ValueError(f"no text encoder {name!r} in model family {self.name!r}")

    def unet_heads(self, channels: int) -> int:
        if self.unet_heads_rule.kind == "fixed_heads":
            return int(self.unet_heads_rule.value)
        return max(1, channels // int(self.unet_heads_rule.value))

    def model_sampling(self, prediction: str | None = None) -> DiscreteModelSampling:
        return self.sampling.model_sampling(prediction)

    def encoder_for_kind(self, kind: str) -> EncoderSpec | None:
        """The encoder a standalone text-encoder file of `kind` ("clip", "t5") plays, if any."""
        return next((spec for spec in self.encoders if spec.kind == kind), None)

    def missing_encoders(self, present: set[str]) -> list[str]:
        """The encoders a CLIP of this family lacks but needs, given those `present`."""
        if self.partial_encoders and present & set(self.encoder_names):
            return []
        return [name for name in self.encoder_names if name not in present]

    def join_encodings(
        self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(context, pooled) from each encoder's (output, pooled). Default: outputs concatenated on
        the feature axis in `context_order` (cut to the shortest), the pooled encoder's pooled."""
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        order = self.context_order or tuple(outputs)
        shared = min(outputs[key][0].shape[1] for key in order)
        cond = torch.cat([outputs[key][0][:, :shared] for key in order], dim=-1)
        return cond, outputs[self.pooled_encoder or order[-1]][1]

    def conditioning_extras(
        self, outputs: Mapping[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> dict[str, Any]:
        """Entries the conditioning carries besides context and pooled output, from each encoder's
        (output, pooled) (HiDream's Llama layers). Default: none."""
        return {}

    def lora_role(self, component: str) -> str | None:
        """The text encoder a normalised LoRA component ("te", "te1", "te2") patches, if any."""
        for spec in self.encoders:
            if component in spec.lora_components:
                return spec.name
        return None

    # --- recognising files -------------------------------------------------------------------
    def recognise(self, prefixes: set[str], keys: set[str]) -> dict[str, str] | None:
        """Encoder name -> stored prefix when a single file holds this family, else None.

        Default: every encoder is present under one of its prefixes, and the UNet has a vector
        (label_emb) input exactly when the family declares vector conditioning.
        """
        if (LABEL_EMB_KEY in keys) != (self.vector_conditioning is not None):
            return None
        found: dict[str, str] = {}
        for spec in self.encoders:
            prefix = next((p for p in spec.single_file_prefixes if p in prefixes), None)
            if prefix is None:
                return None
            found[spec.name] = prefix
        return found

    def adm_unet_config(self, adm_in: int, pooled_dim: int | None) -> dict[str, Any]:
        """diffusers UNet config values for a UNet whose `label_emb` takes `adm_in` inputs.

        Default: SDXL's layout (the pooled text embedding and six size embeddings, `text_time`).
        """
        if pooled_dim is None or (adm_in - pooled_dim) % 6:
            raise ValueError(f"UNet class-embedding input of {adm_in} does not match an SDXL layout")
        return {
            "addition_embed_type": "text_time",
            "addition_time_embed_dim": (adm_in - pooled_dim) // 6,
            "projection_class_embeddings_input_dim": adm_in,
        }

    def vector_builder(self, unet_config: Mapping[str, Any]) -> VectorConditioning | None:
        """The vector-conditioning builder for a loaded UNet of this family (its config given)."""
        return self.vector_conditioning

    def near_miss(self, prefixes: set[str], keys: set[str]) -> str | None:
        """A message naming an unsupported variant of this family that the file looks like."""
        return None

    def recognise_diffusers(self, folder: Path, read_config: ConfigReader) -> bool:
        """Whether a diffusers pipeline folder holds this family."""
        return False

    def prediction(
        self, tf: TensorFile, unet_config: Mapping[str, Any], keys: set[str]
    ) -> tuple[str, str]:
        """(prediction type, the rule that decided) of a single file recognised as this family."""
        if "v_pred" in keys:
            return "v", "v_pred key present"
        return self.sampling.prediction, f"{self.name} default"

    # --- standalone diffusion models (UNETLoader) ---------------------------------------------
    def diffusion_model_prefix(self, keys: set[str]) -> str | None:
        """The prefix of this family's denoising network in a diffusion-model file, if it is one."""
        return None

    def accepts_diffusion_model(self, shapes: Mapping[str, tuple[int, ...]], prefix: str) -> bool:
        """Whether the network its keys matched (`diffusion_model_prefix`) is this family's by its
        shapes; a family that `refines` another and accepts a file takes it from that one."""
        return True

    def load_diffusion_model(
        self, tf: TensorFile, prefix: str, plan: Any, weight_dtype: str
    ) -> tuple[Any, Any]:
        """(network the sampler calls, its model sampling) from a diffusion-model file."""
        raise ValueError(f"model family {self.name!r} has no standalone diffusion-model loader")

    def adapt_model_sampling(self, sampling: Any) -> Any:
        """The model sampling a ModelSampling* node sets on this family's MODEL (default: as given)."""
        return sampling

    def load_vae(self, tf: TensorFile, plan: Any) -> Any | None:
        """A VAE of this family's own architecture stored in `tf` (None: not one; the LDM
        autoencoder is read by the common loader)."""
        return None

    # --- key maps: module parameter name -> stored single-file key --------------------------
    def unet_key_map(self, config: Mapping[str, Any], key_prefix: str = UNET_PREFIX) -> Translator:
        return unet_translator(config, key_prefix)

    def vae_key_map(self, config: Mapping[str, Any], key_prefix: str = VAE_PREFIX) -> Translator:
        return vae_translator(config, key_prefix)

    def encoder_key_map(self, layout: str, key_prefix: str) -> Translator:
        """`key_prefix`: for "hf" it stands for transformers' `text_model.`; for "openclip" it
        precedes OpenCLIP's names."""
        if layout == "openclip":
            return OpenClipTranslator(key_prefix)
        return HfClipTranslator(key_prefix)

    # --- the tiny test architecture ----------------------------------------------------------
    def make_tiny_files(self, root: Path) -> list[Path] | None:
        """Tiny files of a family that is not one checkpoint (split loaders), under the models
        root `root`; None: the family's tiny checkpoint is written the common way."""
        return None

    def tiny_encoder_config(self, config: dict[str, Any]) -> dict[str, Any]:
        return config

    def tiny_unet_layout(self, encoders: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
        """UNet config values of the two-level tiny UNet (cross-attention on the first level)."""
        return {
            "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
            "transformer_layers_per_block": [1, 1],
        }

    def parity_unet_channels(self) -> tuple[int, ...] | None:
        """UNet widths of the parity checkpoint ComfyUI also loads (None: the family has none)."""
        return None

    def mark_prediction(
        self,
        unet_config: Mapping[str, Any],
        unet_weights: dict[str, torch.Tensor],
        prediction: str,
        generator: torch.Generator,
    ) -> None:
        """Make random UNet weights carry the family's prediction marker (when it has one)."""

    def extra_single_file_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors real single files carry besides the weights the modules use."""
        return {}
