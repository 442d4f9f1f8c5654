"""The LTX-Video 0.9, 0.9.1 and 0.9.5 video VAEs (`vae.*` in ltx-video-2b-v0.9 / -v0.9.1 /
-v0.9.5.safetensors, ComfyUI's comfy/ldm/lightricks/vae, its versions 0, 1 and 2) onto diffusers'
`AutoencoderKLLTXVideo`.

Stored layout: `encoder.conv_in.conv`, `encoder.down_blocks.{0..9}` (residual stacks, 2x2x2
compressions `conv.conv`, a channel-doubling residual block), `encoder.conv_out.conv`, the
decoder's mirror (`decoder.up_blocks.{0..9}`), and `per_channel_statistics.{mean-of-means,
std-of-means,...}`. diffusers' own LTX VAE conversion maps the names; the widths are read from the
shapes (base width, then x2, x4, x4) and the residual-block counts from the keys.

What ComfyUI computes, which `LtxvVideoVae` reproduces: a latent on links is normalised per
channel ((mean - mean-of-means) / std-of-means, inside the VAE), so the sampler sees it as is
(latent format scale 1, no shift). Decoding un-normalises, then runs the decoder with
reflect-padded spatial convolutions (ComfyUI's default for this decoder; diffusers pads with
zeros). Encoding takes 1 + 8k frames and gives 1 + k latent frames, 32x smaller spatially.
0.9.1's decoder (told by its `last_time_embedder`) has residual upsamplers that halve the width,
injects noise into its residual stages and is conditioned on timestep 0.05; ComfyUI also mixes
2.5% fresh noise into the latent first, all from torch's global generator, unseeded: comfyd does
the same, so its decode is as random as ComfyUI's (and equal to it under the same torch seed).
0.9.5's (told by its residual compressions, `encoder.down_blocks.1.conv.conv`) encoder compresses
space, time and both twice, doubling the width each time; its decoder is 0.9.1's without injected
noise. Anything else fails to load with the tensors it lacks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from comfyd.models.keymap import Source

MARKER = "decoder.up_blocks.0.res_blocks.0.conv1.conv.weight"
LATENT_CHANNELS = 128
DECODE_TIMESTEP, DECODE_NOISE = 0.05, 0.025  # ComfyUI's VideoVAE.decode defaults
SPATIAL = 32
TEMPORAL = 8
_LATER_VERSIONS = ("decoder.last_time_embedder.timestep_embedder.linear_1.weight", "decoder.timestep_scale_multiplier")
# Where each diffusers stage's residual blocks are stored (0.9 layout): encoder stages 0-3 and
# mid, decoder mid and up stages 0-3.
_ENCODER_STAGES = (0, 3, 6, 8, 9)
_DECODER_STAGES = (9, 6, 3, 1, 0)  # diffusers' order: up stage 3 ... up stage 0, mid
_DECODER_STAGES_091 = (6, 4, 2, 0)  # 0.9.1 and 0.9.5: up stage 2 ... up stage 0, mid
_ENCODER_STAGES_095 = (0, 2, 4, 6, 8)  # 0.9.5: down stages 0-3 and mid


def is_ltxv_vae(keys: set[str], prefix: str = "") -> bool:
    return f"{prefix}{MARKER}" in keys and f"{prefix}encoder.conv_in.conv.weight" in keys


def _count(shapes: Mapping[str, Any], stem: str) -> int:
    pattern = re.compile(re.escape(stem) + r"\.res_blocks\.(\d+)\.")
    found = {int(m.group(1)) for k in shapes if (m := pattern.match(k))}
    return len(found)


def version(shapes: Mapping[str, Any], prefix: str = "") -> str:
    """"0.9", "0.9.1" (timestep-conditioned decoder) or "0.9.5" (residual space / time / all
    compressions in the encoder, ComfyUI's version 2)."""
    if f"{prefix}encoder.down_blocks.1.conv.conv.bias" in shapes:
        return "0.9.5"
    return "0.9.1" if any(prefix + key in shapes for key in _LATER_VERSIONS) else "0.9"


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    which = version(shapes, prefix)
    base = shapes[f"{prefix}encoder.conv_in.conv.weight"][0]
    patch = int(round((shapes[f"{prefix}encoder.conv_in.conv.weight"][1] / 3) ** 0.5))
    encoder_stages = _ENCODER_STAGES_095 if which == "0.9.5" else _ENCODER_STAGES
    encoder = tuple(_count(shapes, f"{prefix}encoder.down_blocks.{i}") for i in encoder_stages)
    stages = _DECODER_STAGES if which == "0.9" else _DECODER_STAGES_091
    decoder = tuple(_count(shapes, f"{prefix}decoder.up_blocks.{i}") for i in stages)
    if 0 in encoder or 0 in decoder:
        raise ValueError(f"not an LTX-Video {which} VAE: a residual stage is missing")
    widths = (base, 2 * base, 4 * base, 4 * base)
    config = {
        "in_channels": 3, "out_channels": 3, "latent_channels": LATENT_CHANNELS,
        "block_out_channels": widths, "decoder_block_out_channels": widths,
        "layers_per_block": encoder,
        "decoder_layers_per_block": decoder,
        "spatio_temporal_scaling": (True, True, True, False),
        "decoder_spatio_temporal_scaling": (True, True, True, False),
        "decoder_inject_noise": (False,) * 5, "upsample_residual": (False,) * 4, "upsample_factor": (1,) * 4,
        "timestep_conditioning": False, "patch_size": patch, "patch_size_t": 1, "resnet_norm_eps": 1e-6,
        "scaling_factor": 1.0, "encoder_causal": True, "decoder_causal": False,
    }  # fmt: skip
    if which == "0.9.5":
        # Residual 2x (space), 2x (time), 2x2x2, 2x2x2 compressions, each doubling the width.
        config.update(
            block_out_channels=(base, 2 * base, 4 * base, 8 * base, 16 * base),
            down_block_types=("LTXVideo095DownBlock3D",) * 4,
            spatio_temporal_scaling=(True, True, True, True),
            downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
            spatial_compression_ratio=SPATIAL, temporal_compression_ratio=TEMPORAL,
        )  # fmt: skip
    if which in ("0.9.1", "0.9.5"):
        # Three residual 2x2x2 upsamplers halving the width, noise injected into the residual
        # stages that have a per-channel noise scale, a timestep-conditioned decoder.
        inject = tuple(f"{prefix}decoder.up_blocks.{i}.res_blocks.0.per_channel_scale1" in shapes for i in stages)
        config.update(
            decoder_block_out_channels=(2 * base, 4 * base, 8 * base),
            decoder_spatio_temporal_scaling=(True, True, True),
            decoder_inject_noise=inject, upsample_residual=(True, True, True), upsample_factor=(2, 2, 2),
            timestep_conditioning=True,
        )  # fmt: skip
    return config


def diffusers_names(original: list[str]) -> dict[str, str]:
    from diffusers.loaders.single_file_utils import convert_ltx_vae_checkpoint_to_diffusers

    # The conversion tells 0.9.5 files by one tensor's shape (a 2048-wide encoder output): names
    # stand in for the tensors, with the shape their version has.
    width = 2048 if "encoder.down_blocks.1.conv.conv.bias" in original else 0
    converted = convert_ltx_vae_checkpoint_to_diffusers(
        {f"vae.{k}": _Name(f"vae.{k}", (0, width)) for k in original}
    )
    return {name: str(stored)[len("vae.") :] for name, stored in converted.items()}


class _Name(str):
    shape: tuple[int, int]

    def __new__(cls, name: str, shape: tuple[int, int]) -> _Name:
        made = super().__new__(cls, name)
        made.shape = shape
        return made


class LtxvVaeTranslator:
    def __init__(self, stored: list[str], prefix: str = "") -> None:
        self.prefix = prefix
        self.names = diffusers_names([k[len(prefix) :] for k in stored if k.startswith(prefix)])

    def source(self, name: str) -> Source | None:
        stored = self.names.get(name)
        return Source(self.prefix + stored) if stored is not None else None


def empty_vae(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLLTXVideo

    with init_empty_weights():
        return AutoencoderKLLTXVideo.from_config(dict(config))


def reflect_decoder_padding(vae: nn.Module) -> None:
    """ComfyUI pads this decoder's spatial convolutions by reflection (time is padded by the
    causal-conv frame repeat either way)."""
    for module in vae.decoder.modules():
        if isinstance(module, nn.Conv3d) and any(module.padding[1:]):
            module.padding_mode = "reflect"


class LtxvVideoVae(nn.Module):
    """What comfyd's video VAE codec calls (`decode`, `_encode`, `config.z_dim`), with ComfyUI's
    per-channel normalisation of the latent inside the VAE."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        reflect_decoder_padding(vae)
        self.config = SimpleNamespace(
            **{**dict(vae.config), "z_dim": LATENT_CHANNELS, "downscale": SPATIAL, "temporal_downscale": TEMPORAL}
        )

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.vae.latents_mean.view(1, -1, 1, 1, 1).to(like)
        std = self.vae.latents_std.view(1, -1, 1, 1, 1).to(like)
        return mean, std

    def decode(self, z: torch.Tensor, return_dict: bool = False) -> tuple[torch.Tensor]:
        mean, std = self._stats(z)
        if not self.vae.config.timestep_conditioning:
            return (self.vae.decoder(z * std + mean, None),)
        # 0.9.1: as ComfyUI, a little fresh noise on the latent (from torch's global generator,
        # unseeded there too) and the decoder conditioned on timestep 0.05; its residual stages
        # add their own noise.
        z = torch.randn_like(z) * DECODE_NOISE + (1.0 - DECODE_NOISE) * z
        timestep = torch.full((z.shape[0],), DECODE_TIMESTEP, dtype=z.dtype, device=z.device)
        return (self.vae.decoder(z * std + mean, timestep),)

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if (x.shape[2] - 1) % TEMPORAL:
            raise ValueError(
                f"the LTX-Video VAE encodes 1 + 8k frames (1, 9, 17, ...), got {x.shape[2]}"
            )
        moments = self.vae.encoder(x)
        mean, std = self._stats(moments)
        return (moments[:, :LATENT_CHANNELS] - mean) / std


def original_name(name: str, version: str = "0.9") -> str:
    """The stored name of an AutoencoderKLLTXVideo parameter of the 0.9 or 0.9.1 layout, for the
    tiny writer."""
    if name in _STATISTICS:
        return _STATISTICS[name]
    side, rest = name.split(".", 1)
    if version in ("0.9.1", "0.9.5") and side == "decoder":
        for ours, theirs in (("time_embedder.", "last_time_embedder."), ("scale_shift_table", "last_scale_shift_table")):
            if rest.startswith(ours):
                return f"decoder.{theirs}{rest[len(ours) :]}"
    if side == "decoder":
        stages = _STAGES_091 if version in ("0.9.1", "0.9.5") else _STAGES[side]
    else:
        stages = _ENCODER_STAGES_095_NAMES if version == "0.9.5" else _STAGES[side]
    for ours, theirs in stages:
        if rest.startswith(ours + "."):
            rest = theirs + rest[len(ours) :]
            break
    rest = rest.replace(".resnets.", ".res_blocks.").replace("conv_shortcut.conv.", "conv_shortcut.")
    return f"{side}.{re.sub(r'[.]norm3[.]', '.norm3.norm.', rest)}"


_STATISTICS = {"latents_mean": "per_channel_statistics.mean-of-means",
               "latents_std": "per_channel_statistics.std-of-means"}  # fmt: skip
# diffusers stage -> stored stage (the 0.9 layout), longest first so sub-stages match first.
_STAGES = {
    "encoder": (
        ("down_blocks.0.downsamplers.0", "down_blocks.1"), ("down_blocks.0.conv_out", "down_blocks.2"),
        ("down_blocks.1.downsamplers.0", "down_blocks.4"), ("down_blocks.1.conv_out", "down_blocks.5"),
        ("down_blocks.2.downsamplers.0", "down_blocks.7"), ("down_blocks.0", "down_blocks.0"),
        ("down_blocks.1", "down_blocks.3"), ("down_blocks.2", "down_blocks.6"), ("down_blocks.3", "down_blocks.8"),
        ("mid_block", "down_blocks.9"),
    ),
    "decoder": (
        ("up_blocks.1.upsamplers.0", "up_blocks.2"), ("up_blocks.2.conv_in", "up_blocks.4"),
        ("up_blocks.2.upsamplers.0", "up_blocks.5"), ("up_blocks.3.conv_in", "up_blocks.7"),
        ("up_blocks.3.upsamplers.0", "up_blocks.8"), ("mid_block", "up_blocks.0"), ("up_blocks.0", "up_blocks.1"),
        ("up_blocks.1", "up_blocks.3"), ("up_blocks.2", "up_blocks.6"), ("up_blocks.3", "up_blocks.9"),
    ),
}  # fmt: skip
_STAGES_091 = (
    ("up_blocks.0.upsamplers.0", "up_blocks.1"), ("up_blocks.1.upsamplers.0", "up_blocks.3"),
    ("up_blocks.2.upsamplers.0", "up_blocks.5"), ("mid_block", "up_blocks.0"), ("up_blocks.0", "up_blocks.2"),
    ("up_blocks.1", "up_blocks.4"), ("up_blocks.2", "up_blocks.6"),
)  # fmt: skip
_ENCODER_STAGES_095_NAMES = (
    ("down_blocks.0.downsamplers.0", "down_blocks.1"), ("down_blocks.1.downsamplers.0", "down_blocks.3"),
    ("down_blocks.2.downsamplers.0", "down_blocks.5"), ("down_blocks.3.downsamplers.0", "down_blocks.7"),
    ("down_blocks.0", "down_blocks.0"), ("down_blocks.1", "down_blocks.2"), ("down_blocks.2", "down_blocks.4"),
    ("down_blocks.3", "down_blocks.6"), ("mid_block", "down_blocks.8"),
)  # fmt: skip
