"""Tiny random-weight checkpoints, LoRAs and embeddings in the real file layouts.

Each registered family (sd1, sd2 v-prediction, sdxl, ...) gets a UNet with two levels, a VAE with the real 8x
downscale (four levels), and text encoders with CLIP's full 49408-token vocabulary and 77
positions, 32 wide. They are written in the original single-file layout (`model.diffusion_model.*`
...) or as a diffusers folder, from the same tensors: the same seed gives the same weights in
both formats, bit for bit. Weights are stored in fp16, as most real checkpoints are. Everything
runs on CPU in about a second per checkpoint.

The same writer produces the full-size random checkpoints the benchmarks use
(`write_random_checkpoint(..., size="full")`) and the SD1 "parity" checkpoint
(`size="parity"`): ComfyUI's real text encoder and VAE with a UNet cut to two levels but kept at
ComfyUI's SD1.5 widths (320 channels, 8 heads, 768-wide context), so that ComfyUI itself detects
and loads it as SD1.5. The fidelity references in tests/fidelity were rendered by ComfyUI from it.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from comfyd.models import detect, families
from comfyd.models.diffusers_layout import write_diffusers_folder
from comfyd.models.keymap import (
    Translator,
    to_original,
)
from comfyd.models.loader import diffusers_family, empty_text_encoder, empty_unet, empty_vae
from comfyd.models.tensorfile import TensorFile

STORAGE_DTYPE = torch.float16
TINY_WIDTH = 32  # text encoder width (each encoder)


@dataclass(frozen=True)
class ModelConfigs:
    family: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    encoders: dict[str, dict[str, Any]]


def full_configs(family: str) -> ModelConfigs:
    """The real architecture's configs, as shipped."""
    spec = families.get(family)
    return ModelConfigs(
        family=family,
        unet=detect.shipped_config(family, "unet.json"),
        vae=detect.shipped_config(family, "vae.json"),
        encoders={e.name: detect.shipped_config(family, e.config) for e in spec.encoders},
    )


def tiny_configs(family: str) -> ModelConfigs:
    """The tiny architecture: the real configs with small widths and depths."""
    spec = families.get(family)
    full = full_configs(family)
    encoders: dict[str, dict[str, Any]] = {}
    for name, config in full.encoders.items():
        encoders[name] = spec.tiny_encoder_config(
            dict(
                config,
                hidden_size=TINY_WIDTH,
                intermediate_size=2 * TINY_WIDTH,
                num_hidden_layers=2,
                num_attention_heads=detect.text_encoder_heads(TINY_WIDTH),
                projection_dim=TINY_WIDTH,
            )
        )
    channels = [32, 64]
    unet = dict(
        full.unet,
        sample_size=8,
        block_out_channels=channels,
        layers_per_block=1,
        attention_head_dim=[detect.unet_heads(family, c) for c in channels],
        cross_attention_dim=sum(e["hidden_size"] for e in encoders.values()),
    )
    unet.update(spec.tiny_unet_layout(encoders))
    vae = dict(full.vae, block_out_channels=[32, 32, 64, 64], layers_per_block=1, sample_size=64)
    return ModelConfigs(family=family, unet=unet, vae=vae, encoders=encoders)


def parity_configs(family: str) -> ModelConfigs:
    """Full text encoders and VAE, a two-level UNet at the real widths (see the module docstring)."""
    parity_channels = families.get(family).parity_unet_channels()
    if parity_channels is None:
        raise ValueError(f"model family {family!r} has no parity checkpoint")
    full = full_configs(family)
    channels = list(parity_channels)
    unet = dict(
        full.unet,
        block_out_channels=channels,
        layers_per_block=1,
        attention_head_dim=[detect.unet_heads(family, c) for c in channels],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
    )
    return ModelConfigs(family=family, unet=unet, vae=full.vae, encoders=full.encoders)


SIZES = {"tiny": tiny_configs, "parity": parity_configs, "full": full_configs}


# --- random weights --------------------------------------------------------------------------
def _generator(seed: int, component: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(component.encode()))


def _init_value(name: str, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """A random value of a reasonable scale for a parameter, so activations stay finite."""
    values = torch.randn(shape, generator=generator, dtype=torch.float32)
    if name.endswith("token_embedding.weight"):
        return values * 0.02
    if name.endswith(("position_embedding.weight", "positional_embedding")):
        return values * 0.01
    if len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        return values / math.sqrt(fan_in)
    if name.endswith("weight"):  # norm scales
        return 1.0 + 0.05 * values
    return 0.02 * values


def random_module(module: nn.Module, seed: int, component: str) -> nn.Module:
    """Fill an empty (meta) module with deterministic random weights, stored in fp16."""
    generator = _generator(seed, component)
    state = {}
    for name, param in module.named_parameters():
        state[name] = _init_value(name, param.shape, generator).to(STORAGE_DTYPE)
    module.load_state_dict(state, strict=False, assign=True)
    return module.requires_grad_(False).eval()


def random_weights(configs: ModelConfigs, seed: int, prediction: str) -> dict[str, dict[str, torch.Tensor]]:
    """diffusers/transformers state dicts ("unet", "vae", encoder names) of a random model."""
    unet = random_module(empty_unet(configs.unet), seed, "unet")
    weights: dict[str, dict[str, torch.Tensor]] = {
        "unet": {k: v for k, v in unet.state_dict().items()},
        "vae": dict(random_module(empty_vae(configs.vae), seed, "vae").state_dict()),
    }
    for name, config in configs.encoders.items():
        encoder = random_module(empty_text_encoder(config), seed, f"text_encoder_{name}")
        # Stored under the names every diffusers folder uses (`text_model.` level included).
        weights[name] = {
            _stored_text_name(k): v for k, v in encoder.state_dict().items() if not k.endswith("position_ids")
        }
    # Make detect's prediction rule say what this checkpoint is meant to be (where it has one).
    families.get(configs.family).mark_prediction(
        configs.unet, weights["unet"], prediction, _generator(seed, "v_pred_statistic")
    )
    return weights


def _stored_text_name(name: str) -> str:
    return name if name.startswith(("text_model.", "text_projection.")) else f"text_model.{name}"


# --- single-file layout ----------------------------------------------------------------------
def encoder_translators(
    family: str, encoder_configs: Mapping[str, Mapping[str, Any]]
) -> dict[str, Translator]:
    """Single-file translators of a family's text encoders (the layout real checkpoints use)."""
    spec = families.get(family)
    out: dict[str, Translator] = {}
    for name in encoder_configs:
        encoder = spec.encoder(name)
        prefix = encoder.single_file_prefixes[0]
        if encoder.layout == "hf":
            prefix += "text_model."
        out[name] = spec.encoder_key_map(encoder.layout, prefix)
    return out


def original_state(
    configs: ModelConfigs, weights: Mapping[str, Mapping[str, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """One original-layout state dict (what a single-file checkpoint holds)."""
    family = families.get(configs.family)
    state = to_original(weights["unet"], family.unet_key_map(configs.unet))
    state.update(to_original(weights["vae"], family.vae_key_map(configs.vae)))
    for name, translator in encoder_translators(configs.family, configs.encoders).items():
        state.update(to_original(weights[name], translator))
    # Tensors real checkpoints carry besides the weights the modules use; loaders must skip them.
    state.update(families.get(configs.family).extra_single_file_tensors())
    return {k: v.contiguous() for k, v in state.items()}


def write_random_checkpoint(
    path: Path,
    family: str = families.DEFAULT_FAMILY,
    fmt: str = "single",
    seed: int = 0,
    size: str = "tiny",
    prediction: str | None = None,
) -> Path:
    """Write a random-weight checkpoint of `family` at `path` (a file, or a folder for diffusers)."""
    if family not in families.names():
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(families.names())}")
    if fmt not in ("single", "diffusers"):
        raise ValueError(f"unknown format {fmt!r}; choose 'single' or 'diffusers'")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose one of {', '.join(SIZES)}")
    configs = SIZES[size](family)
    spec = families.get(family)
    prediction = prediction or spec.sampling.prediction
    if prediction not in ("eps", "v"):
        raise ValueError(f"prediction must be 'eps' or 'v', not {prediction!r}")
    if prediction not in spec.tiny_predictions:
        raise ValueError(
            f"a tiny {family} checkpoint can be written as {' or '.join(spec.tiny_predictions)} prediction "
            f"only (no {prediction!r} marker comfyd detects)"
        )
    weights = random_weights(configs, seed, prediction)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "diffusers":
        return write_diffusers_folder(
            path, family, configs.unet, configs.vae, configs.encoders, prediction, weights
        )
    # One metadata entry: safetensors writes several in a random order, and the same seed should
    # give the same bytes.
    metadata = {"comfyd.random_weights": f"{family} {size} seed={seed}"}
    save_file(original_state(configs, weights), str(path), metadata=metadata)
    return path


def tiny_checkpoint_name(family: str, fmt: str, seed: int = 0) -> str:
    stem = f"comfyd-tiny-{family}" + (f"-seed{seed}" if seed else "")
    return f"{stem}-diffusers" if fmt == "diffusers" else f"{stem}.safetensors"


def make_tiny_checkpoint(
    dir: Path | str, family: str = families.DEFAULT_FAMILY, fmt: str = "single", seed: int = 0, *, prediction: str | None = None
) -> Path:
    """A tiny random checkpoint written into `dir` (e.g. models/checkpoints); returns its path.

    Named `comfyd-tiny-<family>[-seed<N>].safetensors` (single file) or `...-diffusers/` (folder).
    sd2 is v-prediction unless `prediction="eps"`.
    """
    target = Path(dir) / tiny_checkpoint_name(family, fmt, seed)
    return write_random_checkpoint(target, family=family, fmt=fmt, seed=seed, prediction=prediction)


def make_tiny(dir: Path | str, family: str = families.DEFAULT_FAMILY) -> list[Path]:
    """`comfyd models make-tiny DIR [--family F]`: a tiny checkpoint of one registered family (SD1
    by default) in both formats under DIR/checkpoints."""
    family = family.replace("-", "_")  # `--family qwen-image` names the qwen_image family
    if family not in families.names():
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(families.names())}")
    split_files = families.get(family).make_tiny_files(Path(dir))
    if split_files is not None:
        return split_files
    checkpoints = Path(dir) / "checkpoints"
    return [
        make_tiny_checkpoint(checkpoints, family, "single", seed=0),
        make_tiny_checkpoint(checkpoints, family, "diffusers", seed=0),
    ]


# --- LoRAs and embeddings --------------------------------------------------------------------
LORA_UNET_TARGETS = (
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "proj_in",
    "resnets.0.conv1",
)
LORA_TEXT_TARGETS = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.out_proj",
    "mlp.fc1",
)


def checkpoint_configs(base_checkpoint: Path) -> ModelConfigs:
    """The component configs of an existing checkpoint (single file or diffusers folder)."""
    base_checkpoint = Path(base_checkpoint)
    if base_checkpoint.is_dir():
        family, folders = diffusers_family(base_checkpoint)
        return ModelConfigs(
            family=family,
            unet=json.loads((base_checkpoint / "unet" / "config.json").read_text()),
            vae=json.loads((base_checkpoint / "vae" / "config.json").read_text()),
            encoders={
                n: json.loads((base_checkpoint / d / "config.json").read_text()) for n, d in folders.items()
            },
        )
    with TensorFile(base_checkpoint) as tf:
        info = detect.detect_checkpoint(tf)
    return ModelConfigs(
        family=info.family,
        unet=info.unet_config,
        vae=info.vae_config,
        encoders={n: e.config for n, e in info.encoders.items()},
    )


def lora_layers(module: nn.Module, targets: tuple[str, ...]) -> list[tuple[str, nn.Module]]:
    return [
        (name, sub)
        for name, sub in module.named_modules()
        if isinstance(sub, nn.Linear | nn.Conv2d) and name.endswith(targets)
    ]


def _lora_pair(layer: nn.Module, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    weight = layer.weight
    fan_in = math.prod(weight.shape[1:])
    down_shape = (rank, *weight.shape[1:]) if weight.ndim == 4 else (rank, weight.shape[1])
    up_shape = (weight.shape[0], rank, 1, 1) if weight.ndim == 4 else (weight.shape[0], rank)
    down = torch.randn(down_shape, generator=generator) / math.sqrt(fan_in)
    up = torch.randn(up_shape, generator=generator) * 0.5 / math.sqrt(rank)
    return down.to(STORAGE_DTYPE), up.to(STORAGE_DTYPE)


def make_tiny_lora(
    dir: Path | str,
    base_checkpoint: Path | str,
    fmt: str = "kohya",
    *,
    seed: int = 0,
    rank: int = 4,
    unet_names: str = "diffusers",
    name: str | None = None,
    text_encoders: bool = True,
) -> Path:
    """A random LoRA for `base_checkpoint`'s architecture, written into `dir`; returns its path.

    fmt "kohya": `lora_unet_*` / `lora_te*_*` with lora_down / lora_up / alpha (alpha = rank / 2);
    `unet_names` "diffusers" (`down_blocks_0_...`, as sd-scripts writes) or "original"
    (`input_blocks_1_1_...`). fmt "peft": `unet.` / `text_encoder.` with lora_A / lora_B, no alpha.
    Targets the attention projections, proj_in and one resnet conv per block, and the text
    encoders' attention and first MLP layer.
    """
    if fmt not in ("kohya", "peft"):
        raise ValueError(f"unknown LoRA format {fmt!r}; choose 'kohya' or 'peft'")
    if unet_names not in ("diffusers", "original"):
        raise ValueError("unet_names must be 'diffusers' or 'original'")
    configs = checkpoint_configs(Path(base_checkpoint))
    generator = _generator(seed, f"lora-{fmt}")
    tensors: dict[str, torch.Tensor] = {}
    unet = empty_unet(configs.unet)
    translator = families.get(configs.family).unet_key_map(configs.unet, key_prefix="")
    for layer_name, layer in lora_layers(unet, LORA_UNET_TARGETS):
        down, up = _lora_pair(layer, rank, generator)
        if fmt == "peft":
            tensors[f"unet.{layer_name}.lora_A.weight"] = down
            tensors[f"unet.{layer_name}.lora_B.weight"] = up
            continue
        path = layer_name
        if unet_names == "original":
            source = translator.source(f"{layer_name}.weight")
            assert source is not None
            path = source.key[: -len(".weight")]
        base = "lora_unet_" + path.replace(".", "_")
        tensors[f"{base}.lora_down.weight"] = down
        tensors[f"{base}.lora_up.weight"] = up
        tensors[f"{base}.alpha"] = torch.tensor(rank / 2)
    if text_encoders:
        for enc_name, config in configs.encoders.items():
            encoder = empty_text_encoder(config)
            for layer_name, layer in lora_layers(encoder, LORA_TEXT_TARGETS):
                down, up = _lora_pair(layer, rank, generator)
                canonical = _stored_text_name(layer_name)
                encoder_spec = families.get(configs.family).encoder(enc_name)
                if fmt == "peft":
                    prefix = encoder_spec.peft_prefix
                    tensors[f"{prefix}{canonical}.lora_A.weight"] = down
                    tensors[f"{prefix}{canonical}.lora_B.weight"] = up
                else:
                    base = encoder_spec.kohya_prefix + canonical.replace(".", "_")
                    tensors[f"{base}.lora_down.weight"] = down
                    tensors[f"{base}.lora_up.weight"] = up
                    tensors[f"{base}.alpha"] = torch.tensor(rank / 2)
    filename = (
        name or f"comfyd-tiny-{configs.family}-{fmt}" + (f"-seed{seed}" if seed else "") + ".safetensors"
    )
    path = Path(dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path


def make_tiny_embedding(
    dir: Path | str,
    name: str = "comfyd-tiny-embedding",
    family: str = families.DEFAULT_FAMILY,
    *,
    vectors: int = 2,
    seed: int = 0,
    width: int = TINY_WIDTH,
) -> Path:
    """A random textual-inversion embedding in the family's file layout: A1111 `emb_params` (sd1,
    sd2) or SDXL `clip_l`/`clip_g`."""
    generator = _generator(seed, f"embedding-{name}")

    def draw() -> torch.Tensor:
        return (torch.randn(vectors, width, generator=generator) * 0.02).to(STORAGE_DTYPE)

    tensors = {key: draw() for key in families.get(family).embedding_keys}
    path = Path(dir) / f"{name}.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})
    return path
