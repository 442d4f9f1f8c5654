"""The Flux.2 transformer: BFL's file layout (the one ComfyUI reads) onto diffusers'
`Flux2Transformer2DModel`, its config read from the shapes, and the network call the sampler makes.

Stored layout (flux2-dev.safetensors, `model.diffusion_model.` in all-in-one files): `img_in`,
`txt_in`, `time_in.{in,out}_layer`, `guidance_in.*` (dev; [klein] has none), the shared
modulations `double_stream_modulation_{img,txt}.lin` and `single_stream_modulation.lin`,
`double_blocks.N.{img,txt}_{attn.qkv,attn.proj,attn.norm.{query,key}_norm.scale,mlp.0,mlp.2}`,
`single_blocks.N.{linear1,linear2,norm.{query,key}_norm.scale}`, `final_layer.{linear,
adaLN_modulation.1}`. No biases. The double blocks' fused q/k/v rows are split into diffusers'
projections (the single blocks keep theirs fused, as diffusers does); the final modulation stores
(shift, scale) where diffusers holds (scale, shift). `single_stream_modulation` is the marker that
tells Flux.2 from Flux.1 (which has `vector_in` instead).

The network call: the [B, 128, h, w] latent (already 2x2-patchified by the VAE) is one token per
cell with (0, row, column, 0) position ids; text tokens get (0, 0, 0, index). As ComfyUI's Flux2
model does, a context shorter than 512 tokens is padded with zeros in front to 512. Reference
images (`ref_tokens` / `ref_ids`, `_flux2_references.py`) follow the latent's tokens and are cut
from the output, as diffusers' Flux2Pipeline does.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import ROWS, SWAP_HALVES, Source

MARKER_KEYS = ("single_stream_modulation.lin.weight", "img_in.weight", "txt_in.weight")
TEXT_TOKENS = 512  # ComfyUI pads the context to this length (zeros in front)
ROPE_THETA = 2000
_DOUBLE = re.compile(r"double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"single_blocks\.(\d+)\.")


def is_flux2_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS) and f"{prefix}vector_in.in_layer.weight" not in keys


def rope_axes(head_dim: int) -> tuple[int, int, int, int]:
    """Four equal rotary axes (t, h, w, l): (32, 32, 32, 32) for Flux.2's 128-wide heads."""
    if head_dim % 8:
        raise ValueError(f"a Flux.2 head width of {head_dim} cannot be split into four even rotary axes")
    quarter = head_dim // 4
    return (quarter, quarter, quarter, quarter)


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers Flux2Transformer2DModel config values of the transformer stored under `prefix`."""
    hidden, in_channels = shapes[f"{prefix}img_in.weight"]
    head_dim = shapes[f"{prefix}double_blocks.0.img_attn.norm.query_norm.scale"][0]
    doubles = {int(m.group(1)) for k in shapes if (m := _DOUBLE.match(k[len(prefix) :]))}
    singles = {int(m.group(1)) for k in shapes if (m := _SINGLE.match(k[len(prefix) :]))}
    mlp_in = shapes[f"{prefix}double_blocks.0.img_mlp.0.weight"][0]  # gate and value: 2 * mlp width
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shapes[f"{prefix}final_layer.linear.weight"][0],
        "num_layers": len(doubles),
        "num_single_layers": len(singles),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes[f"{prefix}txt_in.weight"][1],
        "timestep_guidance_channels": shapes[f"{prefix}time_in.in_layer.weight"][1],
        "mlp_ratio": mlp_in / (2 * hidden),
        "axes_dims_rope": list(rope_axes(head_dim)),
        "rope_theta": ROPE_THETA,
        "guidance_embeds": f"{prefix}guidance_in.in_layer.weight" in shapes,
    }


_TOP = {
    "x_embedder.": "img_in.",
    "context_embedder.": "txt_in.",
    "time_guidance_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
    "time_guidance_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
    "time_guidance_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
    "time_guidance_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
    "double_stream_modulation_img.linear.": "double_stream_modulation_img.lin.",
    "double_stream_modulation_txt.linear.": "double_stream_modulation_txt.lin.",
    "single_stream_modulation.linear.": "single_stream_modulation.lin.",
    "proj_out.": "final_layer.linear.",
}
_DOUBLE_PARTS = {
    "attn.to_out.0.": "img_attn.proj.",
    "attn.to_add_out.": "txt_attn.proj.",
    "ff.linear_in.": "img_mlp.0.",
    "ff.linear_out.": "img_mlp.2.",
    "ff_context.linear_in.": "txt_mlp.0.",
    "ff_context.linear_out.": "txt_mlp.2.",
}
_DOUBLE_NORMS = {
    "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
    "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
    "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
    "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
}
_QKV = {"to_q": 0, "to_k": 1, "to_v": 2, "add_q_proj": 0, "add_k_proj": 1, "add_v_proj": 2}
_SINGLE_PARTS = {
    "attn.to_qkv_mlp_proj.weight": "linear1.weight",
    "attn.to_out.weight": "linear2.weight",
    "attn.norm_q.weight": "norm.query_norm.scale",
    "attn.norm_k.weight": "norm.key_norm.scale",
}


class Flux2Translator:
    """diffusers Flux2Transformer2DModel parameter names -> BFL keys under `prefix`."""

    def __init__(self, config: Mapping[str, Any], prefix: str = "") -> None:
        self.prefix = prefix
        self.hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])

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
                start = _QKV[parts[3]] * self.hidden
                return Source(f"{p}{block}{stream}.qkv.{parts[4]}", ROWS, start=start, stop=start + self.hidden)
            return None
        if parts[0] == "single_transformer_blocks":
            rest = ".".join(parts[2:])
            if rest in _SINGLE_PARTS:
                return Source(f"{p}single_blocks.{parts[1]}.{_SINGLE_PARTS[rest]}")
        return None


class Flux2NetworkTranslator(Flux2Translator):
    """The same map for the parameters of the `Flux2Network` wrapper (`transformer.` first)."""

    def source(self, name: str) -> Source | None:
        return super().source(name.removeprefix("transformer."))


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import Flux2Transformer2DModel

    with init_empty_weights():
        return Flux2Transformer2DModel.from_config(dict(config))


def image_ids(height: int, width: int, device: Any) -> torch.Tensor:
    """[h * w, 4] ids of the latent grid: (0, row, column, 0), rows first."""
    ids = torch.zeros(height, width, 4, device=device)
    ids[..., 1] = ids[..., 1] + torch.arange(height, device=device)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width, device=device)[None, :]
    return ids.reshape(height * width, 4)


def text_ids(length: int, device: Any) -> torch.Tensor:
    """[length, 4] ids of the text tokens: (0, 0, 0, index)."""
    ids = torch.zeros(length, 4, device=device)
    ids[:, 3] = torch.arange(length, device=device, dtype=ids.dtype)
    return ids


def pad_context(context: torch.Tensor, length: int = TEXT_TOKENS) -> torch.Tensor:
    """Zeros in front up to `length` tokens (a longer context is left as it is)."""
    missing = length - context.shape[1]
    return F.pad(context, (0, 0, missing, 0)) if missing > 0 else context


class Flux2Network(TransformerNetwork):
    """The UNet-shaped call around a Flux2Transformer2DModel (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        added = added_cond_kwargs or {}
        batch, channels, height, width = x.shape
        expected = int(self.transformer.config.in_channels)
        if channels != expected:
            raise ValueError(
                f"the Flux.2 transformer takes {expected}-channel latents, got {channels} "
                "(make the latent with EmptyFlux2LatentImage or a Flux.2 VAE)"
            )
        tokens = x.reshape(batch, channels, height * width).permute(0, 2, 1)
        ids = image_ids(height, width, x.device)
        refs, ref_ids = added.get("ref_tokens"), added.get("ref_ids")
        if refs is not None and ref_ids is not None:
            refs = refs.to(device=x.device, dtype=tokens.dtype)
            if refs.shape[0] != batch:  # one reference batch for every row of the latent
                refs = refs[:1].expand(batch, -1, -1)
            tokens = torch.cat((tokens, refs), dim=1)
            ref_ids = ref_ids.to(device=x.device, dtype=ids.dtype)
            ids = torch.cat((ids, ref_ids[0] if ref_ids.ndim == 3 else ref_ids))
        context = pad_context(encoder_hidden_states)
        guidance = added.get("guidance") if self.transformer.config.guidance_embeds else None
        if guidance is not None:
            guidance = guidance.to(device=x.device, dtype=tokens.dtype).expand(batch)
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=context,
            timestep=timestep.to(tokens.dtype),
            img_ids=ids,
            txt_ids=text_ids(context.shape[1], x.device),
            guidance=guidance,
            return_dict=False,
        )[0]
        out = out[:, : height * width]
        return (out.permute(0, 2, 1).reshape(batch, -1, height, width),)
