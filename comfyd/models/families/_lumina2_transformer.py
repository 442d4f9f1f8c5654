"""The Lumina Image 2.0 transformer (NextDiT, also Neta Lumina's): ComfyUI's file layout onto
diffusers' `Lumina2Transformer2DModel`, its config read from the shapes, and the network call the
sampler makes.

Stored layout (the original release's names, as ComfyUI 0.3.64's comfy/ldm/lumina/model.py holds
them; `model.diffusion_model.` in all-in-one files): `x_embedder`, `t_embedder.mlp.{0,2}`,
`cap_embedder.{0,1}`, `{noise_refiner,context_refiner,layers}.N.{attention.qkv (q, then the key
and value heads, stacked), attention.out, attention.{q,k}_norm, feed_forward.w{1,2,3},
attention_norm{1,2}, ffn_norm{1,2}, adaLN_modulation.1}` (the context refiner has no modulation),
`final_layer.{linear, adaLN_modulation.1}` and an unused `norm_final`. diffusers splits qkv and
renames the rest (the same mapping as its single-file converter). Z-Image's NextDiT has the same
keys plus pad tokens: those tell the two apart (`_z_image_transformer`).

Config: ComfyUI fixes the width (2304), 24 heads and 8 key/value heads and reads only the depth
and the text width (`cap_embedder.1`) from the file; comfyd reads all of them from the shapes
(width from `x_embedder`, head width from `q_norm`, key/value heads from the qkv rows), which
gives ComfyUI's numbers for its files and also loads smaller test files. Rotary axes: the head
split in three equal parts (32, 32, 32 of 96), theta 10000, caption positions then the image grid.

The sampler hands the model [B, 16, H, W] and sigma; the network pads H and W to whole 2x2
patches by wrapping around (as ComfyUI pads), runs the transformer at time 1 - sigma with every
caption token attended (ComfyUI's prompts carry no padding) and returns the negated output.
Prompts of different lengths never share a batch (`exact_context_batches`), as in ComfyUI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import ROWS, Source

PATCH = 2
MARKER_KEYS = (
    "cap_embedder.1.weight",
    "layers.0.attention.qkv.weight",
    "noise_refiner.0.attention.qkv.weight",
)
Z_IMAGE_KEYS = ("cap_pad_token", "x_pad_token")
_QKV = re.compile(r"^(.*\.attn)\.to_([qkv])\.weight$")
_RENAMES = (
    ("time_caption_embed.caption_embedder.", "cap_embedder."),
    ("time_caption_embed.timestep_embedder.linear_1.", "t_embedder.mlp.0."),
    ("time_caption_embed.timestep_embedder.linear_2.", "t_embedder.mlp.2."),
    ("norm_out.linear_1.", "final_layer.adaLN_modulation.1."),
    ("norm_out.linear_2.", "final_layer.linear."),
    (".attn.to_out.0.", ".attention.out."),
    (".attn.norm_q.", ".attention.q_norm."),
    (".attn.norm_k.", ".attention.k_norm."),
    (".feed_forward.linear_1.", ".feed_forward.w1."),
    (".feed_forward.linear_2.", ".feed_forward.w2."),
    (".feed_forward.linear_3.", ".feed_forward.w3."),
    (".norm1.linear.", ".adaLN_modulation.1."),
    (".norm1.norm.", ".attention_norm1."),
    (".norm1.", ".attention_norm1."),
    (".norm2.", ".attention_norm2."),
)


def is_lumina2_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS) and not any(
        prefix + k in keys for k in Z_IMAGE_KEYS
    )


def _count(shapes: Mapping[str, Any], prefix: str, group: str) -> int:
    pattern = re.compile(rf"{re.escape(prefix + group)}\.(\d+)\.")
    return len({int(m.group(1)) for k in shapes if (m := pattern.match(k))})


def rope_axes(head_dim: int) -> list[int]:
    """Lumina 2's (32, 32, 32) split of a 96-wide head: three equal even parts."""
    if head_dim % 6:
        raise ValueError(
            f"Lumina 2 transformer: a {head_dim}-wide head does not split into three rotary axes"
        )
    return [head_dim // 3] * 3


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers Lumina2Transformer2DModel config values of the transformer under `prefix`."""
    dim, patch_width = shapes[prefix + "x_embedder.weight"]
    head_dim = shapes[f"{prefix}layers.0.attention.q_norm.weight"][0]
    heads = dim // head_dim
    kv_heads = (shapes[f"{prefix}layers.0.attention.qkv.weight"][0] // head_dim - heads) // 2
    refiners = _count(shapes, prefix, "noise_refiner")
    if _count(shapes, prefix, "context_refiner") != refiners:
        raise ValueError("Lumina 2 transformer: the noise and context refiners differ in depth")
    hidden = shapes[f"{prefix}layers.0.feed_forward.w1.weight"][0]
    return {
        "sample_size": 128, "patch_size": PATCH, "in_channels": patch_width // (PATCH * PATCH),
        "hidden_size": dim, "num_layers": _count(shapes, prefix, "layers"), "num_refiner_layers": refiners,
        "num_attention_heads": heads, "num_kv_heads": kv_heads,
        "multiple_of": 256 if hidden % 256 == 0 else hidden, "ffn_dim_multiplier": None if hidden % 256 == 0
        else hidden / (4 * dim), "norm_eps": 1e-5, "axes_dim_rope": rope_axes(head_dim),
        "axes_lens": [300, 512, 512], "cap_feat_dim": shapes[f"{prefix}cap_embedder.1.weight"][1],
    }  # fmt: skip


class Lumina2Translator:
    """diffusers parameter names (also under the network wrapper's `transformer.`) -> stored keys
    under `prefix`; q, k and v are row ranges of the stored qkv."""

    def __init__(self, config: Mapping[str, Any], prefix: str = "") -> None:
        self.prefix = prefix
        head_dim = int(config["hidden_size"]) // int(config["num_attention_heads"])
        q_rows, kv_rows = int(config["hidden_size"]), int(config["num_kv_heads"]) * head_dim
        self.rows = {
            "q": (0, q_rows),
            "k": (q_rows, q_rows + kv_rows),
            "v": (q_rows + kv_rows, q_rows + 2 * kv_rows),
        }

    def source(self, name: str) -> Source | None:
        name = name.removeprefix("transformer.")
        match = _QKV.match(name)
        if match:
            start, stop = self.rows[match.group(2)]
            block = match.group(1).removesuffix(".attn")
            return Source(f"{self.prefix}{block}.attention.qkv.weight", ROWS, start=start, stop=stop)
        for theirs, ours in _RENAMES:
            if theirs in name:
                name = name.replace(theirs, ours)
                break
        return Source(self.prefix + name)


def compute_dtype(planned: torch.dtype, device: torch.device) -> torch.dtype:
    """ComfyUI lists bf16 and fp32 only for Lumina 2 (as for Z-Image): fp16 plans run in bf16
    where the device has it, else fp32."""
    from comfyd.models.families._z_image_transformer import compute_dtype as bf16_or_fp32

    return bf16_or_fp32(planned, device)


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import Lumina2Transformer2DModel

    with init_empty_weights():
        return Lumina2Transformer2DModel.from_config(dict(config))


def comfyui_qk_eps(net: nn.Module, dtype: torch.dtype) -> None:
    """ComfyUI's per-head q/k RMSNorms are built without an epsilon, so torch uses the compute
    dtype's (1.2e-7 in fp32, 7.8e-3 in bf16); diffusers' use 1e-5."""
    eps = torch.finfo(dtype).eps
    for module in net.modules():
        if getattr(module, "norm_q", None) is not None:
            module.norm_q.eps = eps
            module.norm_k.eps = eps


class Lumina2Network(TransformerNetwork):
    """The UNet-shaped call around a Lumina2Transformer2DModel (see the module docstring)."""

    exact_context_batches = True
    compute_dtype: torch.dtype | None = None  # set by the loader; the model handle computes in it

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        video = x.ndim == 5
        if video:
            if x.shape[2] != 1:
                raise ValueError(f"Lumina 2 samples single images; got a latent with {x.shape[2]} frames")
            x = x[:, :, 0]
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % PATCH, (-width) % PATCH
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        dtype = self.transformer.x_embedder.weight.dtype
        batch = x.shape[0]
        context = encoder_hidden_states.to(dtype)
        if context.shape[0] != batch:
            context = context.expand(batch, -1, -1)
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=x.device)
        time = (1.0 - timestep.reshape(-1).expand(batch)).to(dtype)
        out = self.transformer(x.to(dtype), time, context, mask, return_dict=False)[0]
        out = -out[:, :, :height, :width]
        return (out.unsqueeze(2) if video else out,)
