"""The Wan 2.1 video VAE (wan_2.1_vae.safetensors, comfy/ldm/wan/vae.py's layout) onto diffusers'
`AutoencoderKLWan`.

Stored layout: `encoder.conv1`, `encoder.downsamples.N.{residual.{0,2,3,6},shortcut,resample.1,
time_conv}`, `encoder.middle.{0,1,2}`, `encoder.head.{0,2}`, `conv1` / `conv2` (the quant convs),
and the decoder's mirror (`decoder.upsamples.N`, four levels of three residual blocks with an
upsampler after each but the last). The structure is fixed (four levels, two residual blocks,
temporal downsampling on levels two and three), only the widths vary: the base width is read from
`encoder.conv1` and the latent width from `conv1`. Loading applies diffusers' own Wan VAE
conversion to the key names; `original_name` is its inverse, for the tiny writer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from torch import nn

from comfyd.models.keymap import Source

MARKER = "decoder.upsamples.0.residual.0.gamma"
_RESNET_PARTS = (
    (".norm1.gamma", ".residual.0.gamma"),
    (".conv1.", ".residual.2."),
    (".norm2.gamma", ".residual.3.gamma"),
    (".conv2.", ".residual.6."),
    (".conv_shortcut.", ".shortcut."),
)
_UP = re.compile(r"decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.")
_MID = re.compile(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.")


def is_wan_vae(keys: set[str], prefix: str = "") -> bool:
    return f"{prefix}{MARKER}" in keys and f"{prefix}encoder.downsamples.0.residual.0.gamma" in keys


def _resnet(rest: str) -> str:
    for ours, theirs in _RESNET_PARTS:
        if rest.startswith(ours):
            return theirs + rest[len(ours) :]
    return rest


def original_name(name: str) -> str:
    """The stored name of a diffusers AutoencoderKLWan parameter."""
    fixed = {"quant_conv.": "conv1.", "post_quant_conv.": "conv2."}
    for ours, theirs in fixed.items():
        if name.startswith(ours):
            return theirs + name[len(ours) :]
    side, rest = name.split(".", 1)
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[len('conv_in.') :]}"
    if rest.startswith("norm_out."):
        return f"{side}.head.0.{rest[len('norm_out.') :]}"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{rest[len('conv_out.') :]}"
    if m := _MID.match(name):
        index = 1 if m.group(2) == "attentions" else 2 * int(m.group(3))
        tail = name[m.end() - 1 :]
        return f"{side}.middle.{index}{tail if m.group(2) == 'attentions' else _resnet(tail)}"
    if name.startswith("encoder.down_blocks."):
        number, tail = rest[len("down_blocks.") :].split(".", 1)
        return f"encoder.downsamples.{number}{_resnet('.' + tail)}"
    if m := _UP.match(name):
        block = int(m.group(1))
        tail = name[m.end() - 1 :]
        if m.group(3) is None:
            return f"decoder.upsamples.{4 * block + 3}{tail}"
        return f"decoder.upsamples.{4 * block + int(m.group(3))}{_resnet(tail)}"
    return name


def diffusers_names(original: list[str]) -> dict[str, str]:
    from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

    return dict(convert_wan_vae_to_diffusers({k: k for k in original}))


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    base = shapes[f"{prefix}encoder.conv1.weight"][0]
    z_dim = shapes[f"{prefix}conv2.weight"][0]
    if f"{prefix}encoder.downsamples.9.residual.2.weight" not in shapes:
        raise ValueError("not a Wan 2.1 VAE: expected four encoder levels of two residual blocks")
    return {"base_dim": base, "z_dim": z_dim, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
            "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0}  # fmt: skip


class WanVaeTranslator:
    def __init__(self, stored: list[str], prefix: str = "") -> None:
        self.prefix = prefix
        self.names = diffusers_names([k[len(prefix) :] for k in stored if k.startswith(prefix)])

    def source(self, name: str) -> Source | None:
        stored = self.names.get(name)
        return Source(self.prefix + stored) if stored is not None else None


def empty_vae(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    with init_empty_weights():
        return AutoencoderKLWan.from_config(dict(config))
