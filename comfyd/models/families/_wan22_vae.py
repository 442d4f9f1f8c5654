"""The Wan 2.2 video VAE (wan2.2_vae.safetensors, the layout of ComfyUI's comfy/ldm/wan/vae2_2.py)
onto diffusers' `AutoencoderKLWan` in its Wan 2.2 configuration (`is_residual`, 12 channels in and
out, patch size 2: 48 latent channels, 16x spatial and 4x temporal compression).

Stored layout: `encoder.conv1`, `encoder.downsamples.N.downsamples.M.{residual.{0,2,3,6},shortcut}`
(two residual blocks per level, then at M = 2 the downsampler `resample.1` / `time_conv`; the
level's averaging shortcut has no weights), `encoder.middle.{0,1,2}`, `encoder.head.{0,2}`,
`conv1` / `conv2` (the quant convs), and the decoder's mirror (`decoder.upsamples.N.upsamples.M`,
three residual blocks per level and the upsampler at M = 3). The structure is fixed (four levels,
temporal resampling on the middle two), only the widths vary: the encoder's base width is read
from `encoder.conv1`, the decoder's from `decoder.conv1` (ComfyUI builds 160 and 256), the latent
width from `conv2`. The names differ from Wan 2.1's only inside the levels; the rest maps as
`_wan_vae.original_name` does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from comfyd.models.families import _wan_vae
from comfyd.models.keymap import Source

MARKER = "decoder.upsamples.0.upsamples.0.residual.0.gamma"
LEVELS = 4
RES_BLOCKS = 2
_DOWN = re.compile(r"encoder\.down_blocks\.(\d+)\.(resnets\.(\d+)|downsampler)\.")
_UP = re.compile(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsampler)\.")


def is_wan22_vae(keys: set[str], prefix: str = "") -> bool:
    return (
        f"{prefix}{MARKER}" in keys
        and f"{prefix}encoder.downsamples.0.downsamples.0.residual.0.gamma" in keys
    )


def original_name(name: str) -> str:
    """The stored name of a diffusers AutoencoderKLWan (Wan 2.2 configuration) parameter."""
    if m := _DOWN.match(name):
        tail = name[m.end() - 1 :]
        if m.group(3) is None:
            return f"encoder.downsamples.{m.group(1)}.downsamples.{RES_BLOCKS}{tail}"
        return f"encoder.downsamples.{m.group(1)}.downsamples.{m.group(3)}{_wan_vae._resnet(tail)}"
    if m := _UP.match(name):
        tail = name[m.end() - 1 :]
        if m.group(3) is None:
            return f"decoder.upsamples.{m.group(1)}.upsamples.{RES_BLOCKS + 1}{tail}"
        return f"decoder.upsamples.{m.group(1)}.upsamples.{m.group(3)}{_wan_vae._resnet(tail)}"
    return _wan_vae.original_name(name)


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """diffusers AutoencoderKLWan config of the Wan 2.2 VAE stored under `prefix`."""
    base, in_channels = shapes[f"{prefix}encoder.conv1.weight"][:2]
    decoder_width = shapes[f"{prefix}decoder.conv1.weight"][0]
    out_channels = shapes[f"{prefix}decoder.head.2.weight"][0]
    z_dim = shapes[f"{prefix}conv2.weight"][0]
    last = f"{prefix}encoder.downsamples.{LEVELS - 1}.downsamples.{RES_BLOCKS - 1}.residual.2.weight"
    if last not in shapes or in_channels % 3 or out_channels != in_channels:
        raise ValueError(
            "not a Wan 2.2 VAE: expected four encoder levels of two residual blocks, 3 x 2 x 2 channels"
        )
    patch = round((in_channels // 3) ** 0.5)
    return {
        "base_dim": base, "decoder_base_dim": decoder_width // 4, "z_dim": z_dim,
        "dim_mult": [1, 2, 4, 4], "num_res_blocks": RES_BLOCKS, "attn_scales": [],
        "temperal_downsample": [False, True, True], "dropout": 0.0, "is_residual": True,
        "in_channels": in_channels, "out_channels": out_channels, "patch_size": patch,
        "scale_factor_temporal": 4, "scale_factor_spatial": 8 * patch,
    }  # fmt: skip


class Wan22VaeTranslator:
    """diffusers AutoencoderKLWan parameter names -> stored keys under `prefix`."""

    def __init__(self, stored: list[str], prefix: str = "") -> None:
        self.prefix = prefix
        self.stored = set(stored)

    def source(self, name: str) -> Source | None:
        key = self.prefix + original_name(name)
        return Source(key) if key in self.stored else None


def empty_vae(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    with init_empty_weights():
        return AutoencoderKLWan.from_config(dict(config))
