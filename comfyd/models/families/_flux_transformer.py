"""The Flux.1 transformer: BFL's file layout (the one ComfyUI reads) onto diffusers'
`FluxTransformer2DModel`, its config read from the shapes, and the network call the sampler makes.

Stored layout (flux1-dev.safetensors, `model.diffusion_model.` in all-in-one checkpoints):
`img_in`, `txt_in`, `time_in.{in,out}_layer`, `vector_in.*`, `guidance_in.*` (dev only),
`double_blocks.N.{img,txt}_{attn.qkv,attn.proj,attn.norm.{query,key}_norm.scale,mlp.0,mlp.2,mod.lin}`,
`single_blocks.N.{linear1,linear2,norm.{query,key}_norm.scale,modulation.lin}`,
`final_layer.{linear,adaLN_modulation.1}`. The fused q/k/v (and single blocks' q/k/v/mlp) rows are
split into diffusers' projections; the final modulation stores (shift, scale) where diffusers
holds (scale, shift).

The sampler calls a UNet-shaped network (`net(x, t, encoder_hidden_states=, added_cond_kwargs=,
return_dict=False)`); `FluxNetwork` packs the [B, 16, h, w] latent into 2x2 patches with their
(0, row, column) position ids as ComfyUI's Flux does (Fill's concat channels appended first,
Kontext's reference tokens after the latent's: `_flux_inputs.py`), runs the transformer with the
pooled CLIP vector and the guidance strength, and unpacks the latent's part of the result.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from comfyd.models.families import _flux_inputs as inputs
from comfyd.models.families._block_skip import with_blocks_skipped
from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import ROWS, SWAP_HALVES, Source

PATCH = inputs.PATCH
_DOUBLE = re.compile(r"double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"single_blocks\.(\d+)\.")
MARKER_KEYS = ("double_blocks.0.img_attn.qkv.weight", "img_in.weight", "txt_in.weight")


def is_flux_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS) and f"{prefix}vector_in.in_layer.weight" in keys


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Rotary dims per position axis: (16, 56, 56) for Flux's 128-wide heads, the same split
    (an eighth, then halves) for smaller test heads."""
    first = head_dim // 8
    rest = head_dim - first
    if first % 2 or rest % 4:
        raise ValueError(f"a Flux head width of {head_dim} cannot be split into even rotary axes")
    return (first, rest // 2, rest // 2)


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers FluxTransformer2DModel config values of the transformer stored under `prefix`."""
    hidden, in_channels = shapes[f"{prefix}img_in.weight"]
    head_dim = shapes[f"{prefix}double_blocks.0.img_attn.norm.query_norm.scale"][0]
    doubles = {int(m.group(1)) for k in shapes if (m := _DOUBLE.match(k[len(prefix) :]))}
    singles = {int(m.group(1)) for k in shapes if (m := _SINGLE.match(k[len(prefix) :]))}
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shapes[f"{prefix}final_layer.linear.weight"][0],
        "num_layers": len(doubles),
        "num_single_layers": len(singles),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes[f"{prefix}txt_in.weight"][1],
        "pooled_projection_dim": shapes[f"{prefix}vector_in.in_layer.weight"][1],
        "guidance_embeds": f"{prefix}guidance_in.in_layer.weight" in shapes,
        "axes_dims_rope": list(rope_axes(head_dim)),
    }


_TOP = {
    "x_embedder.": "img_in.",
    "context_embedder.": "txt_in.",
    "time_text_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
    "time_text_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
    "time_text_embed.text_embedder.linear_1.": "vector_in.in_layer.",
    "time_text_embed.text_embedder.linear_2.": "vector_in.out_layer.",
    "time_text_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
    "time_text_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
    "proj_out.": "final_layer.linear.",
}
_DOUBLE_PARTS = {
    "norm1.linear.": "img_mod.lin.",
    "norm1_context.linear.": "txt_mod.lin.",
    "attn.to_out.0.": "img_attn.proj.",
    "attn.to_add_out.": "txt_attn.proj.",
    "ff.net.0.proj.": "img_mlp.0.",
    "ff.net.2.": "img_mlp.2.",
    "ff_context.net.0.proj.": "txt_mlp.0.",
    "ff_context.net.2.": "txt_mlp.2.",
}
_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_QKV = {"to_q": 0, "to_k": 1, "to_v": 2, "add_q_proj": 0, "add_k_proj": 1, "add_v_proj": 2}
_SINGLE_NORMS = {"attn.norm_q.weight": "norm.query_norm.scale", "attn.norm_k.weight": "norm.key_norm.scale"}


class FluxTranslator:
    """diffusers FluxTransformer2DModel parameter names -> BFL keys under `prefix`."""

    def __init__(self, config: Mapping[str, Any], prefix: str = "") -> None:
        self.prefix = prefix
        self.hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
        self.mlp = self.hidden * 4

    def _rows(self, key: str, index: int, width: int) -> Source:
        return Source(self.prefix + key, ROWS, start=index * self.hidden, stop=index * self.hidden + width)

    def source(self, name: str) -> Source | None:
        p = self.prefix
        if name.startswith("norm_out.linear."):
            return Source(p + "final_layer.adaLN_modulation.1." + name.rsplit(".", 1)[1], SWAP_HALVES)
        for ours, theirs in _TOP.items():
            if name.startswith(ours):
                return Source(p + theirs + name[len(ours) :])
        parts = name.split(".")
        if parts[0] == "transformer_blocks":
            block, rest = f"double_blocks.{parts[1]}.", ".".join(parts[2:])
            if rest in _DOUBLE_NORMS:
                return Source(p + block + _DOUBLE_NORMS[rest])
            for ours, theirs in _DOUBLE_PARTS.items():
                if rest.startswith(ours):
                    return Source(p + block + theirs + rest[len(ours) :])
            if parts[2] == "attn" and parts[3] in _QKV:
                stream = "txt_attn" if parts[3].startswith("add_") else "img_attn"
                return self._rows(f"{block}{stream}.qkv.{parts[4]}", _QKV[parts[3]], self.hidden)
            return None
        if parts[0] == "single_transformer_blocks":
            block, rest = f"single_blocks.{parts[1]}.", ".".join(parts[2:])
            if rest in _SINGLE_NORMS:
                return Source(p + block + _SINGLE_NORMS[rest])
            if rest.startswith("norm.linear."):
                return Source(p + block + "modulation.lin." + parts[-1])
            if rest.startswith("proj_out."):
                return Source(p + block + "linear2." + parts[-1])
            if rest.startswith("proj_mlp."):
                return self._rows(f"{block}linear1.{parts[-1]}", 3, self.mlp)
            if parts[2] == "attn" and parts[3] in ("to_q", "to_k", "to_v"):
                return self._rows(f"{block}linear1.{parts[4]}", _QKV[parts[3]], self.hidden)
        return None


class FluxNetworkTranslator(FluxTranslator):
    """The same map for the parameters of the `FluxNetwork` wrapper (`transformer.` first)."""

    def source(self, name: str) -> Source | None:
        return super().source(name.removeprefix("transformer."))


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    with init_empty_weights():
        return FluxTransformer2DModel.from_config(dict(config))


class FluxNetwork(TransformerNetwork):
    """The UNet-shaped call around a FluxTransformer2DModel (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
        skip_layers: list[int] | None = None,
        skip_single_layers: list[int] | None = None,
    ) -> tuple[torch.Tensor]:
        added = added_cond_kwargs or {}
        # SkipLayerGuidanceDiT: these double / single blocks hand their streams on unchanged.
        transformer = with_blocks_skipped(
            self.transformer, skip_layers or (), skip_single_layers or (), "single_transformer_blocks"
        )
        batch, _, height, width = x.shape
        concat = added.get("concat")
        if concat is not None:  # Fill: masked image and mask channels beside the latent
            x = torch.cat((x, concat.to(device=x.device, dtype=x.dtype)), dim=1)
        packed, rows, cols = inputs.pack(x)
        ids = inputs.position_ids(rows, cols).to(x.device)
        image_tokens = packed.shape[1]
        refs, ref_ids = added.get("ref_tokens"), added.get("ref_ids")
        if refs is not None and ref_ids is not None:  # Kontext: reference tokens after the latent's
            packed = torch.cat((packed, refs.to(device=x.device, dtype=packed.dtype)), dim=1)
            ids = torch.cat((ids[None].expand(batch, -1, -1), ref_ids.to(x.device, torch.float32)), dim=1)
        context = encoder_hidden_states
        pooled = added.get("pooled")
        if pooled is None:
            raise ValueError("Flux conditioning has no pooled_output (encode the prompt with a Flux CLIP)")
        guidance = added.get("guidance") if self.transformer.config.guidance_embeds else None
        txt_ids = torch.zeros(context.shape[1], 3, device=x.device)
        if ids.ndim == 3 and not bool((ids == ids[:1]).all()):
            # Rows laid out differently (diffusers takes one id table per call): one call each.
            out = torch.cat([
                self._run(transformer, packed[i : i + 1], context[i : i + 1], pooled[i : i + 1], timestep[i : i + 1],
                          ids[i], txt_ids, guidance[i : i + 1] if guidance is not None and guidance.shape[0] > 1
                          else guidance)
                for i in range(batch)
            ])  # fmt: skip
        else:
            single_ids = ids[0] if ids.ndim == 3 else ids
            out = self._run(transformer, packed, context, pooled, timestep, single_ids, txt_ids, guidance)
        return (inputs.unpack(out[:, :image_tokens], rows, cols)[:, :, :height, :width],)

    def _run(
        self,
        transformer: nn.Module,
        packed: torch.Tensor,
        context: torch.Tensor,
        pooled: torch.Tensor,
        timestep: torch.Tensor,
        img_ids: torch.Tensor,
        txt_ids: torch.Tensor,
        guidance: torch.Tensor | None,
    ) -> torch.Tensor:
        return transformer(
            hidden_states=packed,
            encoder_hidden_states=context,
            pooled_projections=pooled,
            timestep=timestep.to(packed.dtype),
            img_ids=img_ids,
            txt_ids=txt_ids,
            guidance=guidance.to(packed.dtype) if guidance is not None else None,
            return_dict=False,
        )[0]
