"""The HunyuanVideo VAE (hunyuan_video_vae_bf16.safetensors) onto diffusers'
`AutoencoderKLHunyuanVideo`, computing what ComfyUI computes with it.

Stored layout: the LDM autoencoder's names with causal 3-D convolutions (`encoder.conv_in.conv`,
`encoder.down.N.block.M.conv1.conv`, `decoder.up.N.upsample.conv.conv`, `*.nin_shortcut.conv`),
a 1x1x1 Conv3d attention in the middle (`mid.attn_1.{q,k,v,proj_out}`), `quant_conv` /
`post_quant_conv` as 1x1x1 Conv3d. ComfyUI builds it as its LDM autoencoder with `conv3d=True`,
`time_compress=4` (comfy/sd.py); the names map onto diffusers' with the same table as the 2-D
autoencoder (`keymap.vae_translator`), the widths read from the shapes.

The one difference in what the two compute: diffusers masks the middle attention causally frame
by frame, ComfyUI attends over every position of every frame. comfyd's module drops the mask, so
its decode is ComfyUI's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from comfyd.models.keymap import PrefixTranslator, vae_translator

MARKER = "decoder.conv_in.conv.weight"
LATENT_CHANNELS = 16
TIME_COMPRESSION = 4
_DOWN = re.compile(r"encoder\.down\.(\d+)\.block\.(\d+)\.")


def is_hunyuan_vae(keys: set[str], prefix: str = "") -> bool:
    """ComfyUI's 8x / 4x causal video VAE (the z channels decide the family, as in comfy/sd.py)."""
    return (
        f"{prefix}{MARKER}" in keys
        and f"{prefix}encoder.down.0.block.0.conv1.conv.weight" in keys
        and f"{prefix}post_quant_conv.weight" in keys
    )


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    levels: dict[int, int] = {}
    for key in shapes:
        if key.startswith(prefix) and (m := _DOWN.match(key[len(prefix) :])) and key.endswith("conv1.conv.weight"):
            levels[int(m.group(1))] = max(levels.get(int(m.group(1)), 0), int(m.group(2)) + 1)
    if not levels:
        raise ValueError("not a HunyuanVideo VAE: no encoder levels (encoder.down.N.block.M)")
    widths = [shapes[f"{prefix}encoder.down.{n}.block.0.conv2.conv.weight"][0] for n in sorted(levels)]
    latent = shapes[f"{prefix}{MARKER}"][1]
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": latent,
        "down_block_types": ["HunyuanVideoDownBlock3D"] * len(widths),
        "up_block_types": ["HunyuanVideoUpBlock3D"] * len(widths),
        "block_out_channels": widths,
        "layers_per_block": levels[0],
        "norm_num_groups": 32,
        "spatial_compression_ratio": 2 ** (len(widths) - 1),
        "temporal_compression_ratio": TIME_COMPRESSION,
        "mid_block_add_attention": True,
    }


def translator(config: Mapping[str, Any], prefix: str = "") -> PrefixTranslator:
    return vae_translator(config, prefix)


class _UnmaskedAttention:
    """diffusers' attention processor with the causal frame mask dropped (ComfyUI's middle
    attention sees every frame)."""

    def __init__(self) -> None:
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.inner = AttnProcessor2_0()

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.inner(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=temb)


def unmask_middle_attention(vae: nn.Module) -> nn.Module:
    for part in (vae.encoder, vae.decoder):
        for attn in part.mid_block.attentions:
            if attn is not None:
                attn.set_processor(_UnmaskedAttention())
    return vae


def empty_vae(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLHunyuanVideo

    with init_empty_weights():
        vae = AutoencoderKLHunyuanVideo.from_config(dict(config))
    return unmask_middle_attention(vae)
