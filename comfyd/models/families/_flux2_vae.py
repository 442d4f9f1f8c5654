"""The Flux.2 autoencoder (flux2-vae.safetensors) onto diffusers' `AutoencoderKLFlux2`, seen
through the latent ComfyUI puts on its links: 128 channels at 1/16 of the image.

Stored layout: the LDM autoencoder (`encoder.down.N.block.M...`, `decoder.up...`, 32 latent
channels), the quant convs either inside the halves (`encoder.quant_conv`,
`decoder.post_quant_conv`, BFL's spelling) or at the top (`quant_conv`, `post_quant_conv`), and
the latent batch norm's statistics `bn.running_mean` / `bn.running_var` over the 2x2-patchified
latent (128 values). That batch norm is the marker.

What ComfyUI's VAE does with such a file (comfy/sd.py, batch-norm latent): encoding takes the
posterior mean, folds each 2x2 patch into the channels (channel-major: c * 4 + row * 2 + column)
and normalises with the running statistics; decoding undoes both before the post-quant conv. The
codec (`vae_codec`, `vae_tiled`) calls `encoder`, `quant_conv`, `post_quant_conv` and `decoder`
of the module it holds; `Flux2Autoencoder` gives it halves that include those steps.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from comfyd.models.keymap import Source, vae_translator

MARKERS = ("bn.running_mean", "bn.running_var", "decoder.conv_in.weight", "encoder.down.0.block.0.conv1.weight")
PATCH = 2


def is_flux2_vae(keys: set[str], prefix: str = "") -> bool:
    return all(prefix + key in keys for key in MARKERS)


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """diffusers AutoencoderKLFlux2 config values of the autoencoder under `prefix`."""
    from comfyd.models import detect

    base = detect.shipped_config("sd1", "vae.json")
    ldm = detect.infer_vae_config(shapes, prefix, base)
    quant = f"{prefix}quant_conv.weight" in shapes or f"{prefix}encoder.quant_conv.weight" in shapes
    post = f"{prefix}post_quant_conv.weight" in shapes or f"{prefix}decoder.post_quant_conv.weight" in shapes
    latent = int(ldm["latent_channels"])
    if shapes[f"{prefix}bn.running_mean"][0] != latent * PATCH * PATCH:
        raise ValueError(f"Flux.2 VAE: bn statistics do not cover 2x2 patches of {latent} channels")
    return {
        "in_channels": ldm["in_channels"],
        "out_channels": ldm["out_channels"],
        "down_block_types": ldm["down_block_types"],
        "up_block_types": ldm["up_block_types"],
        "block_out_channels": ldm["block_out_channels"],
        "layers_per_block": ldm["layers_per_block"],
        "latent_channels": latent,
        "norm_num_groups": ldm.get("norm_num_groups", 32),
        "use_quant_conv": quant,
        "use_post_quant_conv": post,
        "mid_block_add_attention": ldm["mid_block_add_attention"],
    }


class Flux2VaeTranslator:
    """diffusers AutoencoderKLFlux2 names -> stored keys (LDM names, either quant-conv spelling)."""

    def __init__(self, config: Mapping[str, Any], keys: set[str], prefix: str = "") -> None:
        self.prefix = prefix
        self.ldm = vae_translator(config, prefix)
        self.inner_quant = f"{prefix}encoder.quant_conv.weight" in keys

    def source(self, name: str) -> Source | None:
        p = self.prefix
        if name.startswith("bn."):
            return Source(p + name)
        if self.inner_quant and name.startswith(("quant_conv.", "post_quant_conv.")):
            half = "encoder." if name.startswith("quant_conv.") else "decoder."
            return Source(p + half + name)
        return self.ldm.source(name)


def empty_vae(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLFlux2

    with init_empty_weights():
        return AutoencoderKLFlux2.from_config(dict(config))


def patchify(latent: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] -> [B, 4C, H/2, W/2], each 2x2 patch folded into the channels (channel-major)."""
    b, c, h, w = latent.shape
    x = latent.reshape(b, c, h // PATCH, PATCH, w // PATCH, PATCH).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * PATCH * PATCH, h // PATCH, w // PATCH)


def unpatchify(latent: torch.Tensor) -> torch.Tensor:
    b, c, h, w = latent.shape
    x = latent.reshape(b, c // (PATCH * PATCH), PATCH, PATCH, h, w).permute(0, 1, 4, 2, 5, 3)
    return x.reshape(b, c // (PATCH * PATCH), h * PATCH, w * PATCH)


def _statistics(vae: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


class _EncodeToLinkLatent(nn.Module):
    """Pixels -> moments whose first half is the normalised, patchified posterior mean (the
    codec keeps that half; the second is zeros, the log-variance is not used downstream)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        moments = self.vae.encoder(x)
        if self.vae.quant_conv is not None:
            moments = self.vae.quant_conv(moments)
        mean = patchify(torch.chunk(moments, 2, dim=1)[0])
        bn_mean, bn_std = _statistics(self.vae, mean)
        normalised = (mean - bn_mean) / bn_std
        return torch.cat([normalised, torch.zeros_like(normalised)], dim=1)


class _DecodeFromLinkLatent(nn.Module):
    """The link latent -> pixels: undo the batch norm and the patches, then the decoder."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        bn_mean, bn_std = _statistics(self.vae, z)
        z = unpatchify(z * bn_std + bn_mean)
        if self.vae.post_quant_conv is not None:
            z = self.vae.post_quant_conv(z)
        return self.vae.decoder(z)


@dataclass(frozen=True)
class LinkLatentConfig:
    """What the VAE handle reads: the link latent's width and the pixels per latent cell."""

    latent_channels: int
    latent_downscale: int
    block_out_channels: tuple[int, ...]


class Flux2Autoencoder(nn.Module):
    """AutoencoderKLFlux2 with the codec's interface over ComfyUI's 128-channel link latent."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae
        self.encoder = _EncodeToLinkLatent(vae)
        self.decoder = _DecodeFromLinkLatent(vae)
        self.quant_conv = None  # both inside the halves above
        self.post_quant_conv = None
        levels = tuple(int(c) for c in vae.config.block_out_channels)
        self.config = LinkLatentConfig(
            latent_channels=int(vae.config.latent_channels) * PATCH * PATCH,
            latent_downscale=2 ** (len(levels) - 1) * PATCH,
            block_out_channels=levels,
        )
