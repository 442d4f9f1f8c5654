"""The Z-Image transformer (a single-stream NextDiT): ComfyUI's file layout onto diffusers'
`ZImageTransformer2DModel`, its config read from the shapes, and the network call the sampler makes.

Stored layout (z_image*.safetensors in `diffusion_models/`; `model.diffusion_model.` in all-in-one
files), the original release's names: `x_embedder`, `cap_embedder.{0,1}`, `t_embedder.mlp.{0,2}`,
`x_pad_token`, `cap_pad_token`, `{noise_refiner,context_refiner,layers}.N.{attention.qkv (q, k
and v stacked), attention.out, attention.{q,k}_norm, feed_forward.w{1,2,3}, attention_norm{1,2},
ffn_norm{1,2}, adaLN_modulation.0}` (the context refiner has no modulation),
`final_layer.{linear, adaLN_modulation.1}`. diffusers keeps the embedder and final layer per patch
size (`all_x_embedder.2-1`, `all_final_layer.2-1`), splits qkv and names `out` / the norms its own
way (the same mapping as diffusers' single-file converter). The pad tokens tell Z-Image from
Lumina 2 (the same NextDiT without them). Files in diffusers' own layout load too (no renaming).

Config: width from `x_embedder`, head width from `q_norm`, depths by counting, the text width from
`cap_embedder.1`; rotary axes split the head as the 6B's (32, 48, 48 of 128), theta 256,
timesteps scaled by 1000.

The sampler hands the model [B, 16, H, W] and sigma; the network pads H and W to whole 2x2
patches by wrapping around (as ComfyUI pads), runs the transformer at time 1 - sigma and
returns the negated output (Z-Image predicts data minus noise; the sampler wants CONST's
noise minus data). Prompts of different lengths never share a batch (`exact_context_batches`),
so no attention mask is ever needed.
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
EMBEDDER = f"{PATCH}-1"  # diffusers' key of the 2x2 (one frame) embedder and final layer
MARKER_KEYS = ("x_pad_token", "cap_pad_token", "cap_embedder.1.weight")
QKV_KEYS = ("layers.0.attention.qkv.weight", "layers.0.attention.to_q.weight")  # stored / diffusers layout
DIFFUSERS_MARKER = f"all_x_embedder.{EMBEDDER}.weight"
_RENAMES = (
    (".attention.to_out.0.", ".attention.out."),
    (".attention.norm_q.", ".attention.q_norm."),
    (".attention.norm_k.", ".attention.k_norm."),
)
_QKV = re.compile(r"^(.*\.attention)\.to_([qkv])\.weight$")


def is_z_image_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS) and any(prefix + key in keys for key in QKV_KEYS)


def is_diffusers_layout(keys: set[str], prefix: str) -> bool:
    """A transformer saved by diffusers itself (`all_x_embedder.2-1`, split q/k/v), which the
    later ComfyUI also loads."""
    return prefix + DIFFUSERS_MARKER in keys


def _count(shapes: Mapping[str, Any], prefix: str, group: str) -> int:
    pattern = re.compile(rf"{re.escape(prefix + group)}\.(\d+)\.")
    return len({int(m.group(1)) for k in shapes if (m := pattern.match(k))})


def rope_axes(head_dim: int) -> list[int]:
    """The 6B's (32, 48, 48) split of a 128-wide head, scaled to other (even) head widths."""
    first = 2 * round(head_dim / 8)
    rest = head_dim - first
    return [first, rest // 2, rest - rest // 2]


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers ZImageTransformer2DModel config values of the transformer under `prefix`."""
    diffusers = is_diffusers_layout(set(shapes), prefix)
    dim, patch_width = shapes[prefix + (DIFFUSERS_MARKER if diffusers else "x_embedder.weight")]
    head_dim = shapes[f"{prefix}layers.0.attention.{'norm_q' if diffusers else 'q_norm'}.weight"][0]
    refiners = _count(shapes, prefix, "noise_refiner")
    if _count(shapes, prefix, "context_refiner") != refiners:
        raise ValueError("Z-Image transformer: the noise and context refiners differ in depth")
    return {
        "all_patch_size": (PATCH,), "all_f_patch_size": (1,), "in_channels": patch_width // (PATCH * PATCH),
        "dim": dim, "n_layers": _count(shapes, prefix, "layers"), "n_refiner_layers": refiners,
        "n_heads": dim // head_dim, "n_kv_heads": dim // head_dim, "norm_eps": 1e-5, "qk_norm": True,
        "cap_feat_dim": shapes[f"{prefix}cap_embedder.1.weight"][1], "rope_theta": 256.0, "t_scale": 1000.0,
        "axes_dims": rope_axes(head_dim), "axes_lens": [1536, 512, 512],
    }  # fmt: skip


class ZImageTranslator:
    """diffusers parameter names (also under the network wrapper's `transformer.`) -> stored keys
    under `prefix`; q, k and v are row ranges of the stored qkv (LoRAs on either name patch the
    same rows)."""

    def __init__(self, config: Mapping[str, Any], prefix: str = "", diffusers_layout: bool = False) -> None:
        self.prefix = prefix
        self.dim = int(config["dim"])
        self.diffusers_layout = diffusers_layout  # the file has diffusers' own names: no renaming

    def source(self, name: str) -> Source | None:
        name = name.removeprefix("transformer.")
        if self.diffusers_layout:
            return Source(self.prefix + name)
        match = _QKV.match(name)
        if match:
            start = "qkv".index(match.group(2)) * self.dim
            return Source(
                f"{self.prefix}{match.group(1)}.qkv.weight", ROWS, start=start, stop=start + self.dim
            )
        name = name.replace(f"all_x_embedder.{EMBEDDER}.", "x_embedder.")
        name = name.replace(f"all_final_layer.{EMBEDDER}.", "final_layer.")
        for theirs, ours in _RENAMES:
            name = name.replace(theirs, ours)
        return Source(self.prefix + name)


def original_state(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A diffusers state dict in the stored layout (tiny test files)."""
    translator = ZImageTranslator(config)
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in state.items():
        source = translator.source(name)
        assert source is not None
        if source.op == ROWS:
            parts = pending.setdefault(source.key, {})
            parts[source.start] = tensor
            if len(parts) == 3:
                out[source.key] = torch.cat([parts[k] for k in sorted(parts)], dim=0)
        else:
            out[source.key] = tensor
    return out


def compute_dtype(planned: torch.dtype, device: torch.device) -> torch.dtype:
    """The dtype Z-Image runs in: ComfyUI lists bf16 and fp32 only for it (no fp16 unless asked
    for), so where the plan says fp16 it runs in bf16 where the device has it, else fp32."""
    if planned != torch.float16:
        return planned
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import ZImageTransformer2DModel

    with init_empty_weights():
        return ZImageTransformer2DModel.from_config(dict(config))


class ZImageNetwork(TransformerNetwork):
    """The UNet-shaped call around a ZImageTransformer2DModel (see the module docstring)."""

    exact_context_batches = True  # prompts of different lengths run as separate batches
    compute_dtype: torch.dtype | None = None  # set by the loader; the model handle computes in it

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, Any] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        if x.ndim == 5:
            if x.shape[2] != 1:
                raise ValueError(f"Z-Image samples single images; got a latent with {x.shape[2]} frames")
            x = x[:, :, 0]
            video = True
        else:
            video = False
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % PATCH, (-width) % PATCH
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        dtype = self.transformer.cap_embedder[1].weight.dtype  # kept in the compute dtype under fp8
        images = list(x.to(dtype).unsqueeze(2).unbind(0))  # each [C, 1, H, W]
        context = list(encoder_hidden_states.to(dtype).unbind(0))
        time = (1.0 - timestep.reshape(-1).expand(x.shape[0])).to(dtype)
        out = self.transformer(images, time, context, return_dict=False)[0]
        out = -torch.stack([o[:, 0] for o in out])[:, :, :height, :width]
        return (out.unsqueeze(2) if video else out,)
