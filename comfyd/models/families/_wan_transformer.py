"""The Wan 2.1 video transformer: the original file layout (the one ComfyUI reads,
comfy/ldm/wan/model.py) onto diffusers' `WanTransformer3DModel`, its config read from the shapes,
and the network call the sampler makes.

Stored layout: `patch_embedding`, `text_embedding.{0,2}`, `time_embedding.{0,2}`,
`time_projection.1`, `blocks.N.{self_attn,cross_attn}.{q,k,v,o,norm_q,norm_k}`,
`blocks.N.norm3` (the cross-attention norm), `blocks.N.ffn.{0,2}`, `blocks.N.modulation`,
`head.head`, `head.modulation`; image-to-video files add `cross_attn.{k_img,v_img,norm_k_img}`
and `img_emb.proj.*`. The names map one to one (diffusers' own Wan single-file conversion is
applied to the key names, so nothing is renamed twice); no tensor is reshaped. ComfyUI derives
the head count from the width (128 per head), as comfyd does.

The sampler calls a UNet-shaped network (`net(x, t, encoder_hidden_states=, ...)`) with a
[B, 16, T, h, w] latent and the flow timestep (sigma * 1000); `WanNetwork` pads h and w to whole
2x2 patches by wrapping around (ComfyUI's pad_to_patch_size) and crops the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families import _wan_clip
from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import Source

HEAD_DIM = 128
MARKER_KEYS = ("patch_embedding.weight", "text_embedding.0.weight", "blocks.0.self_attn.q.weight")
_BLOCK = re.compile(r"blocks\.(\d+)\.")

# diffusers name -> original name, in order (the inverse of diffusers' rename table; the
# image-embedder and block-norm names go first because their diffusers spellings overlap).
_TO_ORIGINAL = (
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    (".norm2.", ".norm3."),
    ("attn1", "self_attn"),
    ("attn2", "cross_attn"),
    (".to_out.0.", ".o."),
    (".to_q.", ".q."),
    (".to_k.", ".k."),
    (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."),
    (".add_v_proj.", ".v_img."),
    (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"),
    ("ffn.net.2", "ffn.2"),
)


# Stored names diffusers' conversion leaves alone (the FLF2V image position table).
_UNCONVERTED = {"condition_embedder.image_embedder.pos_embed": "img_emb.emb_pos"}


def is_wan_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS)


def original_name(name: str) -> str:
    """The stored name of a diffusers WanTransformer3DModel parameter."""
    if name == "scale_shift_table":
        return "head.modulation"
    if name.startswith("proj_out."):
        return "head.head." + name[len("proj_out.") :]
    out = name
    for ours, theirs in _TO_ORIGINAL:
        out = out.replace(ours, theirs)
    return out.replace(".scale_shift_table", ".modulation")


def diffusers_names(original: list[str]) -> dict[str, str]:
    """diffusers name -> stored name, by diffusers' own conversion of the stored names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return dict(convert_wan_transformer_to_diffusers({k: k for k in original}))


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers WanTransformer3DModel config of the transformer stored under `prefix`."""
    dim, in_channels, *patch = shapes[f"{prefix}patch_embedding.weight"]
    blocks = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k[len(prefix) :]))}
    out_features = shapes[f"{prefix}head.head.weight"][0]
    cells = patch[0] * patch[1] * patch[2]
    image = f"{prefix}img_emb.proj.0.weight" in shapes
    if dim % HEAD_DIM:
        raise ValueError(f"a Wan transformer {dim} wide cannot have {HEAD_DIM}-wide heads")
    return {
        "patch_size": list(patch),
        "num_attention_heads": dim // HEAD_DIM,
        "attention_head_dim": HEAD_DIM,
        "in_channels": in_channels,
        "out_channels": out_features // cells,
        "text_dim": shapes[f"{prefix}text_embedding.0.weight"][1],
        "freq_dim": shapes[f"{prefix}time_embedding.0.weight"][1],
        "ffn_dim": shapes[f"{prefix}blocks.0.ffn.0.weight"][0],
        "num_layers": len(blocks),
        "cross_attn_norm": f"{prefix}blocks.0.norm3.weight" in shapes,
        "qk_norm": "rms_norm_across_heads" if f"{prefix}blocks.0.self_attn.norm_q.weight" in shapes else None,
        "eps": 1e-6,
        "image_dim": shapes[f"{prefix}img_emb.proj.0.weight"][0] if image else None,
        "added_kv_proj_dim": dim if image else None,
        "rope_max_seq_len": 1024,
    } | _wan_clip.position_table_config(shapes, prefix)


class WanTranslator:
    """diffusers WanTransformer3DModel parameter names -> stored keys under `prefix`."""

    def __init__(self, stored: list[str], prefix: str = "") -> None:
        self.prefix = prefix
        self.names = diffusers_names([k[len(prefix) :] for k in stored if k.startswith(prefix)])

    def source(self, name: str) -> Source | None:
        stored = self.names.get(name, _UNCONVERTED.get(name))
        return Source(self.prefix + stored) if stored is not None else None


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights():
        return _wan_clip.install(WanTransformer3DModel.from_config(dict(config)))


class WanNetwork(TransformerNetwork):
    """The UNet-shaped call around a WanTransformer3DModel (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(f"a Wan model samples video latents [B, C, T, H, W], got shape {list(x.shape)}")
        _, _, frames, height, width = x.shape
        added = added_cond_kwargs or {}
        extra = self.transformer.config.in_channels - x.shape[1]
        if extra > 0:  # image-to-video: the start image and its mask (_wan_i2v.py)
            x = torch.cat((x, _concat_input(x, extra, added.get("concat"))), dim=1)
        image = _wan_clip.transformer_inputs(self.transformer, added, x.dtype)  # CLIP vision (_wan_clip.py)
        pt, ph, pw = self.transformer.config.patch_size
        pads = (0, (-width) % pw, 0, (-height) % ph, 0, (-frames) % pt)
        if any(pads):
            x = F.pad(x, pads, mode="circular")
        with _wan_clip.image_tokens(None if image is None else image.shape[1]):
            out = self.transformer(
                hidden_states=x,
                timestep=timestep.to(x.dtype),
                encoder_hidden_states=encoder_hidden_states.to(x.dtype),
                encoder_hidden_states_image=image,
                return_dict=False,
            )[0]
        return (out[:, :, :frames, :height, :width],)


def _concat_input(x: torch.Tensor, channels: int, concat: torch.Tensor | None) -> torch.Tensor:
    """The I2V extra channels for latent `x`: zeros without a start image, else `concat` fitted
    to x's frames (padded with zeros or cut)."""
    b, _, frames, height, width = x.shape
    if concat is None:
        return x.new_zeros((b, channels, frames, height, width))
    if concat.shape[1] != channels or tuple(concat.shape[-2:]) != (height, width):
        raise ValueError(
            f"the image-to-video input has shape {list(concat.shape)}, the model needs {channels} "
            f"channels of {height}x{width}"
        )
    concat = concat[:, :, :frames].to(x.dtype)
    return F.pad(concat, (0, 0, 0, 0, 0, frames - concat.shape[2]))
