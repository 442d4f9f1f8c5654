"""The LTX-Video transformer: the original file layout (the one ComfyUI reads,
comfy/ldm/lightricks/model.py) onto diffusers' `LTXVideoTransformer3DModel`, its config read from
the shapes, and the network call the sampler makes.

Stored layout (under `model.diffusion_model.` in the all-in-one ltx-video-2b checkpoints):
`patchify_proj`, `adaln_single.{emb.timestep_embedder.linear_1,_2, linear}`,
`caption_projection.linear_{1,2}`, `transformer_blocks.N.{attn1,attn2}.{to_q,to_k,to_v,
to_out.0,q_norm,k_norm}`, `transformer_blocks.N.ff.net.{0.proj,2}`,
`transformer_blocks.N.scale_shift_table`, `scale_shift_table`, `proj_out`. Four names differ
from diffusers' (diffusers' own LTX single-file conversion renames them; nothing is reshaped).
As ComfyUI does, the head count is 32 and the head width is the width / 32.

The call (what ComfyUI's LTXVModel computes): the [B, 128, t, h, w] latent is flattened to t*h*w
tokens (patch size 1); each token's rotary position is its latent corner scaled to pixels
(x8 frames, x32 rows and columns), the frame coordinate multiplied by 1 / frame_rate (the
conditioning's frame_rate, 25 without one). The timestep is sigma * 1000; with a denoise mask
(image-to-video) each token gets its own, mask * sigma * 1000, so frames the mask keeps run at
timestep 0. The text's attention mask (T5 padding) masks the cross-attention.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import Source

HEADS = 32  # ComfyUI's detection: attention_head_dim = width // 32 (unless the file's config says)
SCALE_FACTORS = (8, 32, 32)  # the VAE's frames / rows / columns per latent cell
DEFAULT_FRAME_RATE = 25.0
MARKER_KEYS = ("adaln_single.emb.timestep_embedder.linear_1.bias", "transformer_blocks.0.attn2.to_k.weight",
               "patchify_proj.weight")  # fmt: skip
_BLOCK = re.compile(r"transformer_blocks\.(\d+)\.")
# diffusers name part -> stored name part.
_TO_ORIGINAL = (("proj_in.", "patchify_proj."), ("time_embed.", "adaln_single."), (".norm_q.", ".q_norm."),
                (".norm_k.", ".k_norm."))  # fmt: skip


def is_ltxv_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS)


def original_name(name: str) -> str:
    """The stored name of a diffusers LTXVideoTransformer3DModel parameter."""
    out = name
    for ours, theirs in _TO_ORIGINAL:
        if ours.startswith("."):
            out = out.replace(ours, theirs)
        elif out.startswith(ours):
            out = theirs + out[len(ours) :]
    return out


def diffusers_names(original: list[str]) -> dict[str, str]:
    """diffusers name -> stored name, by diffusers' own conversion of the stored names."""
    from diffusers.loaders.single_file_utils import convert_ltx_transformer_checkpoint_to_diffusers

    return dict(convert_ltx_transformer_checkpoint_to_diffusers({k: k for k in original}))


def file_config(path: Any) -> dict[str, Any]:
    """The `transformer` part of the config a safetensors file's metadata carries (LTX-Video's
    files may; ComfyUI reads it over its detection), {} without one."""
    from comfyd.models.header_probe import HeaderError, read_header

    try:
        metadata = read_header(path).metadata if str(path).endswith(".safetensors") else {}
        config = json.loads(metadata.get("config", "{}")).get("transformer", {})
    except (HeaderError, OSError, ValueError, AttributeError):
        return {}
    return config if isinstance(config, dict) else {}


def infer_config(
    shapes: Mapping[str, tuple[int, ...]], prefix: str, declared: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """diffusers LTXVideoTransformer3DModel config of the transformer stored under `prefix`;
    `declared`: the file's metadata config, whose head layout wins, as in ComfyUI."""
    width, context_dim = shapes[f"{prefix}transformer_blocks.0.attn2.to_k.weight"]
    blocks = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k[len(prefix) :]))}
    in_channels = shapes[f"{prefix}patchify_proj.weight"][1]
    declared = declared or {}
    heads = int(declared.get("num_attention_heads", HEADS))
    head_dim = int(declared.get("attention_head_dim", width // heads if width % heads == 0 else 0))
    if heads * head_dim != width:
        raise ValueError(f"an LTX-Video transformer {width} wide cannot have {heads} heads")
    return {
        "in_channels": in_channels,
        "out_channels": shapes[f"{prefix}proj_out.weight"][0],
        "patch_size": 1,
        "patch_size_t": 1,
        "num_attention_heads": heads,
        "attention_head_dim": head_dim,
        "cross_attention_dim": context_dim,
        "num_layers": len(blocks),
        "caption_channels": shapes[f"{prefix}caption_projection.linear_1.weight"][1],
    }


class LtxvTranslator:
    """diffusers LTXVideoTransformer3DModel parameter names -> stored keys under `prefix`."""

    def __init__(self, stored: list[str], prefix: str = "") -> None:
        self.prefix = prefix
        self.names = diffusers_names([k[len(prefix) :] for k in stored if k.startswith(prefix)])

    def source(self, name: str) -> Source | None:
        stored = self.names.get(name)
        return Source(self.prefix + stored) if stored is not None else None


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import LTXVideoTransformer3DModel

    with init_empty_weights():
        return LTXVideoTransformer3DModel.from_config(dict(config))


def pixel_coords(batch: int, frames: int, height: int, width: int, causal_fix: bool = False) -> torch.Tensor:
    """[B, 3, frames*height*width] float32: each token's latent corner in pixels (frame, row,
    column), in the order the tokens are flattened. `causal_fix`: the first latent frame stands
    for one pixel frame, so frame coordinates move back by 7 (not before 0)."""
    grid = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width), indexing="ij")
    coords = torch.stack([g.flatten() for g in grid], dim=0).unsqueeze(0).repeat(batch, 1, 1)
    coords = coords * torch.tensor(SCALE_FACTORS).view(1, 3, 1)
    if causal_fix:
        coords[:, 0] = (coords[:, 0] + 1 - SCALE_FACTORS[0]).clamp(min=0)
    return coords.to(torch.float32)


def token_timesteps(timestep: torch.Tensor, denoise_mask: torch.Tensor | None, tokens: int) -> torch.Tensor:
    """The transformer's timestep (x1000): [B] without a mask, else [B, tokens] (mask * sigma)."""
    t = timestep.to(torch.float32)
    if denoise_mask is None:
        return t * 1000.0
    batch = t.shape[0]
    mask = denoise_mask[:, :1]
    per_token = (mask * t.view([batch] + [1] * (mask.ndim - 1))).flatten(1)
    if per_token.shape[1] != tokens:
        raise ValueError(f"the denoise mask covers {per_token.shape[1]} latent cells, the latent has {tokens}")
    return per_token * 1000.0


class LtxvNetwork(TransformerNetwork):
    """The UNet-shaped call around an LTXVideoTransformer3DModel (see the module docstring)."""

    # ComfyUI's default for files without a metadata config; 0.9.5+ files set it there.
    causal_temporal_positioning = False

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(f"an LTX-Video model samples video latents [B, C, T, H, W], got shape {list(x.shape)}")
        added = added_cond_kwargs or {}
        batch, channels, frames, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        coords = pixel_coords(batch, frames, height, width, self.causal_temporal_positioning).to(x.device)
        keyframe_idxs = added.get("keyframe_idxs")
        if keyframe_idxs is not None:  # LTXVAddGuide's keyframes: the last tokens sit at their frames
            coords[:, :, -keyframe_idxs.shape[2] :] = keyframe_idxs.to(coords)
        rate = added.get("frame_rate")
        if rate is None:
            coords[:, 0] = coords[:, 0] * (1.0 / DEFAULT_FRAME_RATE)
        else:
            coords[:, 0] = coords[:, 0] * (1.0 / rate.to(torch.float32).view(-1, 1))
        mask = added.get("encoder_attention_mask")
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=encoder_hidden_states.to(x.dtype),
            timestep=token_timesteps(timestep, added.get("denoise_mask"), tokens.shape[1]),
            encoder_attention_mask=mask.to(x.dtype) if mask is not None else None,
            video_coords=coords,
            return_dict=False,
        )[0]
        return (out.transpose(1, 2).reshape(batch, -1, frames, height, width),)
