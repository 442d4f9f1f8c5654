"""The SD3 / SD3.5 MMDiT: Stability's file layout (the one ComfyUI reads) onto diffusers'
`SD3Transformer2DModel`, and its config read from the shapes.

Stored layout (sd3_medium.safetensors, sd3.5_*.safetensors; `model.diffusion_model.` in
all-in-one checkpoints): `pos_embed`, `x_embedder.proj`, `t_embedder.mlp.{0,2}`,
`y_embedder.mlp.{0,2}`, `context_embedder`,
`joint_blocks.N.{x_block,context_block}.{attn.qkv,attn.proj,attn.ln_{q,k},adaLN_modulation.1,mlp.fc{1,2}}`,
`joint_blocks.N.x_block.attn2.*` (SD3.5 medium's dual-attention blocks),
`final_layer.{linear,adaLN_modulation.1}`. The fused q/k/v rows are split into diffusers'
projections. The last block's context stream only feeds the image stream's attention (no
proj, no mlp); its modulation, like the final layer's, stores (shift, scale) where diffusers
holds (scale, shift). Heads are 64 wide (width // 64 of them), as in ComfyUI's model detection,
which also builds width // 64 blocks: a file ComfyUI loads whole has that many.

The sampler calls a UNet-shaped network; `SD3Network` hands the latent, the timestep (sigma *
1000 on ModelSamplingSD3's table, what diffusers' transformer takes), the joint CLIP/T5 context
and the pooled CLIP-L+G vector to the transformer, padding odd latent sizes to whole patches by
wrapping around and cropping the result, as ComfyUI's MMDiT does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import CHUNK3, COPY, ROWS, SWAP_HALVES, Source

_JOINT = re.compile(r"joint_blocks\.(\d+)\.")
_ATTN2 = re.compile(r"joint_blocks\.(\d+)\.x_block\.attn2\.qkv\.weight$")
HEAD_WIDTH = 64  # ComfyUI's MMDiT: depth = width // 64 heads of 64
MARKER_KEYS = ("joint_blocks.0.x_block.attn.qkv.weight", "x_embedder.proj.weight", "context_embedder.weight")


def is_sd3_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS) and f"{prefix}y_embedder.mlp.0.weight" in keys


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers SD3Transformer2DModel config values of the MMDiT stored under `prefix`."""
    hidden, in_channels, patch, _ = shapes[f"{prefix}x_embedder.proj.weight"]
    rest = {k[len(prefix) :] for k in shapes if k.startswith(prefix)}
    blocks = {int(m.group(1)) for k in rest if (m := _JOINT.match(k))}
    dual = sorted(int(m.group(1)) for k in rest if (m := _ATTN2.match(k)))
    depth = len(blocks)
    positions = shapes[f"{prefix}pos_embed"][1]
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"SD3 pos_embed holds {positions} positions, not a square grid")
    return {
        "sample_size": 128,
        "patch_size": patch,
        "in_channels": in_channels,
        "num_layers": depth,
        "attention_head_dim": HEAD_WIDTH,
        "num_attention_heads": hidden // HEAD_WIDTH,
        "joint_attention_dim": shapes[f"{prefix}context_embedder.weight"][1],
        "caption_projection_dim": hidden,
        "pooled_projection_dim": shapes[f"{prefix}y_embedder.mlp.0.weight"][1],
        "out_channels": shapes[f"{prefix}final_layer.linear.weight"][0] // (patch * patch),
        "pos_embed_max_size": side,
        "dual_attention_layers": tuple(dual),
        "qk_norm": "rms_norm" if "joint_blocks.0.x_block.attn.ln_q.weight" in rest else None,
    }


_TOP = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj.": "x_embedder.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "t_embedder.mlp.0.",
    "time_text_embed.timestep_embedder.linear_2.": "t_embedder.mlp.2.",
    "time_text_embed.text_embedder.linear_1.": "y_embedder.mlp.0.",
    "time_text_embed.text_embedder.linear_2.": "y_embedder.mlp.2.",
    "context_embedder.": "context_embedder.",
    "proj_out.": "final_layer.linear.",
}
_BLOCK_PARTS = {
    "norm1.linear.": "x_block.adaLN_modulation.1.",
    "attn.to_out.0.": "x_block.attn.proj.",
    "attn.to_add_out.": "context_block.attn.proj.",
    "attn2.to_out.0.": "x_block.attn2.proj.",
    "ff.net.0.proj.": "x_block.mlp.fc1.",
    "ff.net.2.": "x_block.mlp.fc2.",
    "ff_context.net.0.proj.": "context_block.mlp.fc1.",
    "ff_context.net.2.": "context_block.mlp.fc2.",
    "attn.norm_q.": "x_block.attn.ln_q.",
    "attn.norm_k.": "x_block.attn.ln_k.",
    "attn.norm_added_q.": "context_block.attn.ln_q.",
    "attn.norm_added_k.": "context_block.attn.ln_k.",
    "attn2.norm_q.": "x_block.attn2.ln_q.",
    "attn2.norm_k.": "x_block.attn2.ln_k.",
}
_QKV = {
    "attn.to_q": ("x_block.attn.qkv", 0),
    "attn.to_k": ("x_block.attn.qkv", 1),
    "attn.to_v": ("x_block.attn.qkv", 2),
    "attn.add_q_proj": ("context_block.attn.qkv", 0),
    "attn.add_k_proj": ("context_block.attn.qkv", 1),
    "attn.add_v_proj": ("context_block.attn.qkv", 2),
    "attn2.to_q": ("x_block.attn2.qkv", 0),
    "attn2.to_k": ("x_block.attn2.qkv", 1),
    "attn2.to_v": ("x_block.attn2.qkv", 2),
}


class SD3Translator:
    """diffusers SD3Transformer2DModel parameter names -> Stability keys under `prefix`."""

    def __init__(self, config: Mapping[str, Any], prefix: str = "") -> None:
        self.prefix = prefix
        self.last = int(config["num_layers"]) - 1

    def source(self, name: str) -> Source | None:
        p = self.prefix
        if name.startswith("norm_out.linear."):
            return Source(p + "final_layer.adaLN_modulation.1." + name.rsplit(".", 1)[1], SWAP_HALVES)
        for ours, theirs in _TOP.items():
            if name.startswith(ours):
                return Source(p + theirs + name[len(ours) :])
        parts = name.split(".")
        if parts[0] != "transformer_blocks":
            return None
        index = int(parts[1])
        block, rest = f"{p}joint_blocks.{index}.", ".".join(parts[2:])
        if rest.startswith("norm1_context.linear."):
            # The last block's context modulation is diffusers' continuous (scale, shift) norm.
            op = SWAP_HALVES if index == self.last else COPY
            return Source(block + "context_block.adaLN_modulation.1." + parts[-1], op)
        for ours, theirs in _BLOCK_PARTS.items():
            if rest.startswith(ours):
                return Source(block + theirs + rest[len(ours) :])
        projection = ".".join(parts[2:4])
        if projection in _QKV:
            key, third = _QKV[projection]
            return Source(f"{block}{key}.{parts[-1]}", CHUNK3, index=third)
        return None


class SD3NetworkTranslator(SD3Translator):
    """The same map for the parameters of the `SD3Network` wrapper (`transformer.` first), each
    q/k/v third given as its rows of the fused weight (what LoRAs on the stored names patch)."""

    def __init__(self, config: Mapping[str, Any], prefix: str = "") -> None:
        super().__init__(config, prefix)
        self.width = int(config["num_attention_heads"]) * int(config["attention_head_dim"])

    def source(self, name: str) -> Source | None:
        found = super().source(name.removeprefix("transformer."))
        if found is None or found.op != CHUNK3:
            return found
        start = found.index * self.width
        return Source(found.key, ROWS, start=start, stop=start + self.width)


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import SD3Transformer2DModel

    with init_empty_weights():
        return SD3Transformer2DModel.from_config(dict(config))


class SD3Network(TransformerNetwork):
    """The UNet-shaped call around an SD3Transformer2DModel (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
        skip_layers: list[int] | None = None,
        skip_single_layers: list[int] | None = None,  # ComfyUI's MMDiT has no single blocks to skip
    ) -> tuple[torch.Tensor]:
        pooled = (added_cond_kwargs or {}).get("pooled")
        if pooled is None:
            raise ValueError("SD3 conditioning has no pooled_output (encode the prompt with an SD3 CLIP)")
        height, width = x.shape[-2:]
        patch = int(self.transformer.config.patch_size)
        pad_h, pad_w = (-height) % patch, (-width) % patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        out = self.transformer(
            hidden_states=x,
            encoder_hidden_states=encoder_hidden_states,
            pooled_projections=pooled,
            timestep=timestep.to(x.dtype).expand(x.shape[0]),
            skip_layers=skip_layers,  # SkipLayerGuidanceSD3: these blocks hand both streams on
            return_dict=False,
        )[0]
        return (out[:, :, :height, :width],)
