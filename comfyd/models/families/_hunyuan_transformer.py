"""The HunyuanVideo transformer: the file layouts ComfyUI reads (comfy/ldm/hunyuan_video/model.py)
onto diffusers' `HunyuanVideoTransformer3DModel`, its config read from the shapes, and the
network call the sampler makes.

Stored layout (hunyuan_video_t2v_720p_bf16.safetensors): `img_in.proj` (a 1x2x2 Conv3d),
`time_in.{in,out}_layer`, `vector_in.{in,out}_layer`, `guidance_in.{in,out}_layer`,
`txt_in.{input_embedder,t_embedder.*,c_embedder.*}`, `txt_in.individual_token_refiner.blocks.N.
{norm1,self_attn.qkv,self_attn.proj,norm2,mlp.0,mlp.2,adaLN_modulation.1}`, Flux's double and
single stream blocks (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, ...) and
`final_layer.{linear,adaLN_modulation.1}`. Tencent's original spellings (`img_attn_qkv`,
`img_mod.linear`, `mlp.fc1`, `self_attn_qkv`, `q_norm.weight`, `t_embedder.mlp.0`, ...) are read
too: they are renamed to the layout above first, as ComfyUI does when it loads them.

Config as ComfyUI detects it: width from `img_in`, 128-wide heads (read from the q-norm scale),
rotary axes (16, 56, 56) for 128-wide heads, 4x MLP, depths counted, theta 256.

The sampler calls a UNet-shaped network with a [B, 16, T, h, w] latent and the flow timestep
(sigma * 1000); `HunyuanNetwork` passes the Llama context with an all-ones mask (ComfyUI drops
the mask when nothing is masked, which is the same computation), the pooled CLIP-L vector and the
guidance strength * 1000 (ComfyUI's timestep embedding of the guidance scales it by 1000).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families._flux_transformer import FluxTranslator, rope_axes
from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import ROWS, Source

MARKER = "txt_in.individual_token_refiner.blocks.0.norm1.weight"
_DOUBLE = re.compile(r"double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"single_blocks\.(\d+)\.")
_REFINER = re.compile(r"txt_in\.individual_token_refiner\.blocks\.(\d+)\.")

# Tencent's spelling -> ComfyUI's (the renames ComfyUI applies when it loads the original file).
_TENCENT_RENAMES = (
    ("txt_in.t_embedder.mlp.0.", "txt_in.t_embedder.in_layer."),
    ("txt_in.t_embedder.mlp.2.", "txt_in.t_embedder.out_layer."),
    ("txt_in.c_embedder.linear_1.", "txt_in.c_embedder.in_layer."),
    ("txt_in.c_embedder.linear_2.", "txt_in.c_embedder.out_layer."),
    ("_mod.linear.", "_mod.lin."),
    ("_attn_qkv.", "_attn.qkv."),
    ("mlp.fc1.", "mlp.0."),
    ("mlp.fc2.", "mlp.2."),
    ("_attn_q_norm.weight", "_attn.norm.query_norm.scale"),
    ("_attn_k_norm.weight", "_attn.norm.key_norm.scale"),
    (".q_norm.weight", ".norm.query_norm.scale"),
    (".k_norm.weight", ".norm.key_norm.scale"),
    ("_attn_proj.", "_attn.proj."),
    (".modulation.linear.", ".modulation.lin."),
    ("_in.mlp.2.", "_in.out_layer."),
    ("_in.mlp.0.", "_in.in_layer."),
)

# diffusers name -> ComfyUI name, outside the double / single blocks.
_TOP = {
    "x_embedder.proj.": "img_in.proj.",
    "time_text_embed.timestep_embedder.linear_1.": "time_in.in_layer.",
    "time_text_embed.timestep_embedder.linear_2.": "time_in.out_layer.",
    "time_text_embed.text_embedder.linear_1.": "vector_in.in_layer.",
    "time_text_embed.text_embedder.linear_2.": "vector_in.out_layer.",
    "time_text_embed.guidance_embedder.linear_1.": "guidance_in.in_layer.",
    "time_text_embed.guidance_embedder.linear_2.": "guidance_in.out_layer.",
    "context_embedder.proj_in.": "txt_in.input_embedder.",
    "context_embedder.time_text_embed.timestep_embedder.linear_1.": "txt_in.t_embedder.in_layer.",
    "context_embedder.time_text_embed.timestep_embedder.linear_2.": "txt_in.t_embedder.out_layer.",
    "context_embedder.time_text_embed.text_embedder.linear_1.": "txt_in.c_embedder.in_layer.",
    "context_embedder.time_text_embed.text_embedder.linear_2.": "txt_in.c_embedder.out_layer.",
}
_REFINER_PARTS = {
    "norm1.": "norm1.",
    "norm2.": "norm2.",
    "attn.to_out.0.": "self_attn.proj.",
    "ff.net.0.proj.": "mlp.0.",
    "ff.net.2.": "mlp.2.",
    "norm_out.linear.": "adaLN_modulation.1.",
}
_REFINER_QKV = {"to_q": 0, "to_k": 1, "to_v": 2}


def comfy_name(stored: str) -> str:
    """A stored key in ComfyUI's layout (Tencent's original spellings renamed)."""
    out = stored
    for theirs, ours in _TENCENT_RENAMES:
        out = out.replace(theirs, ours)
    return out


def is_hunyuan_transformer(keys: set[str], prefix: str) -> bool:
    return f"{prefix}{MARKER}" in keys and f"{prefix}img_in.proj.weight" in keys


def _count(pattern: re.Pattern[str], names: list[str]) -> int:
    return len({int(m.group(1)) for name in names if (m := pattern.match(name))})


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers HunyuanVideoTransformer3DModel config of the transformer stored under `prefix`."""
    named = {comfy_name(k[len(prefix) :]): v for k, v in shapes.items() if k.startswith(prefix)}
    names = list(named)
    hidden, in_channels, *patch = named["img_in.proj.weight"]
    if len(patch) != 3:
        raise ValueError("a HunyuanVideo transformer has a 3-D patch embedding (img_in.proj)")
    head_dim = named["double_blocks.0.img_attn.norm.query_norm.scale"][0]
    cells = patch[0] * patch[1] * patch[2]
    vector = named.get("vector_in.in_layer.weight")
    if vector is None:
        raise ValueError("HunyuanVideo transformers without a pooled-vector input are not supported")
    return {
        "in_channels": in_channels,
        "out_channels": named["final_layer.linear.weight"][0] // cells,
        "num_attention_heads": hidden // head_dim,
        "attention_head_dim": head_dim,
        "num_layers": _count(_DOUBLE, names),
        "num_single_layers": _count(_SINGLE, names),
        "num_refiner_layers": _count(_REFINER, names),
        "mlp_ratio": named["double_blocks.0.img_mlp.0.weight"][0] / hidden,
        "patch_size": patch[1],
        "patch_size_t": patch[0],
        "qk_norm": "rms_norm",
        "guidance_embeds": "guidance_in.in_layer.weight" in named,
        "text_embed_dim": named["txt_in.input_embedder.weight"][1],
        "pooled_projection_dim": vector[1],
        "rope_theta": 256.0,
        "rope_axes_dim": list(rope_axes(head_dim)),
    }


class HunyuanTranslator(FluxTranslator):
    """diffusers HunyuanVideoTransformer3DModel parameter names -> stored keys under `prefix`.

    The double / single stream blocks and the final layer are Flux's (the base class); the
    embedders and the token refiner are HunyuanVideo's own."""

    def __init__(self, config: Mapping[str, Any], stored: list[str], prefix: str = "") -> None:
        super().__init__(config, "")  # Flux's blocks; the prefix is applied by `_resolve`
        self.mlp = int(self.hidden * float(config["mlp_ratio"]))
        self.stored = {comfy_name(k[len(prefix) :]): k for k in stored if k.startswith(prefix)}

    def _resolve(self, source: Source | None) -> Source | None:
        if source is None:
            return None
        key = self.stored.get(source.key)
        if key is None:
            return Source(source.key, source.op, source.index, source.start, source.stop)
        return Source(key, source.op, source.index, source.start, source.stop)

    def comfy_source(self, name: str) -> Source | None:
        """Where parameter `name` sits in ComfyUI's layout (no prefix)."""
        for ours, theirs in _TOP.items():
            if name.startswith(ours):
                return Source(theirs + name[len(ours) :])
        parts = name.split(".")
        if name.startswith("context_embedder.token_refiner.refiner_blocks."):
            block = f"txt_in.individual_token_refiner.blocks.{parts[3]}."
            rest = ".".join(parts[4:])
            if parts[4] == "attn" and parts[5] in _REFINER_QKV:
                start = _REFINER_QKV[parts[5]] * self.hidden
                return Source(f"{block}self_attn.qkv.{parts[6]}", ROWS, start=start, stop=start + self.hidden)
            for ours, theirs in _REFINER_PARTS.items():
                if rest.startswith(ours):
                    return Source(block + theirs + rest[len(ours) :])
            return None
        return super().source(name)

    def source(self, name: str) -> Source | None:
        return self._resolve(self.comfy_source(name))


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import HunyuanVideoTransformer3DModel

    with init_empty_weights():
        return HunyuanVideoTransformer3DModel.from_config(dict(config))


DEFAULT_GUIDANCE = 6.0  # what ComfyUI's HunyuanVideo model sees without FluxGuidance
GUIDANCE_SCALE = 1000.0  # ComfyUI embeds the guidance strength like a timestep in 0..1 * 1000


class HunyuanNetwork(TransformerNetwork):
    """The UNet-shaped call around a HunyuanVideoTransformer3DModel (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        if x.ndim != 5:
            raise ValueError(
                f"a HunyuanVideo model samples video latents [B, C, T, H, W], got shape {list(x.shape)}"
            )
        added = added_cond_kwargs or {}
        pooled = added.get("pooled")
        if pooled is None:
            raise ValueError(
                "HunyuanVideo conditioning has no pooled_output (encode the prompt with a "
                "DualCLIPLoader type hunyuan_video CLIP)"
            )
        _, _, frames, height, width = x.shape
        config = self.transformer.config
        pt, p = int(config.patch_size_t), int(config.patch_size)
        pads = (0, (-width) % p, 0, (-height) % p, 0, (-frames) % pt)
        if any(pads):  # whole patches, wrapping around (ComfyUI's pad_to_patch_size)
            x = F.pad(x, pads, mode="circular")
        context = encoder_hidden_states.to(x.dtype)
        mask = torch.ones(context.shape[:2], dtype=torch.long, device=x.device)
        guidance = added.get("guidance")
        if config.guidance_embeds:
            value = guidance if guidance is not None else torch.tensor([DEFAULT_GUIDANCE])
            guidance = (value.to(device=x.device, dtype=torch.float32) * GUIDANCE_SCALE).expand(x.shape[0])
        else:
            guidance = None
        out = self.transformer(
            hidden_states=x,
            timestep=timestep.to(x.dtype),
            encoder_hidden_states=context,
            encoder_attention_mask=mask,
            pooled_projections=pooled.to(device=x.device, dtype=x.dtype),
            guidance=guidance.to(x.dtype) if guidance is not None else None,
            return_dict=False,
        )[0]
        return (out[:, :, :frames, :height, :width],)
