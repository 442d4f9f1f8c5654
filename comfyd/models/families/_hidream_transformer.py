"""The HiDream-I1 transformer (full, dev, fast: one architecture): ComfyUI's file layout onto
diffusers' `HiDreamImageTransformer2DModel` (MoE feed-forwards), its config read from the shapes.

Stored layout (hidream_i1_{full,dev,fast}_*.safetensors in `diffusion_models/`;
`model.diffusion_model.` in all-in-one files): `t_embedder.timestep_embedder.linear_{1,2}`,
`p_embedder.pooled_embedder.linear_{1,2}`, `x_embedder.proj`, `double_stream_blocks.N.block.*`,
`single_stream_blocks.N.block.*` (attention `attn1.{to_q,to_k,to_v,to_out}[_t]`, RMS q/k norms,
MoE `ff_i.{gate,shared_experts,experts.E}`, text `ff_t`), `final_layer.{linear,adaLN_modulation.1}`
and `caption_projection.{0..blocks}.linear` (one Llama projection per block, then T5's). These
are diffusers' own names, so the map is the identity under the prefix.

ComfyUI 0.3.64 recognises the file by `caption_projection.0.linear.weight` and fixes every size
(20 heads of 128, 16 double and 32 single blocks, 4 experts with 2 active, 4096-wide T5 and Llama
inputs, 2048-wide pooled vector, rotary axes 64/32/32, Llama layer i feeding block i up to the
32nd, the last one after). comfyd reads the same values from the shapes (heads of 128, as
ComfyUI), so a full-size file gets ComfyUI's config and a cut one (tests, parity) runs too.

`HiDreamNetwork` calls it as ComfyUI's model does: the latent patchified row-major with no
padding mask (diffusers would pad a non-square latent to its 128x128 maximum and mask it; ComfyUI
does not), timestep sigma * 1000, the T5 context, the pooled CLIP-L+G vector, the Llama stack
[B, layers, tokens, hidden] (layers past the stack's last repeat it), and the output negated.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import Source

HEAD_DIM = 128  # ComfyUI's fixed attention_head_dim
AXES_DIMS_ROPE = (64, 32, 32)
ACTIVE_EXPERTS = 2
LLAMA_LAYERS = 32  # Llama-3.1-8B: ComfyUI's list feeds layer i to block i, then layer 31 to the rest
MARKER_KEYS = ("caption_projection.0.linear.weight", "x_embedder.proj.weight", "double_stream_blocks.0.block.attn1.to_q.weight")
_BLOCK = {"double": re.compile(r"double_stream_blocks\.(\d+)\."), "single": re.compile(r"single_stream_blocks\.(\d+)\.")}
_EXPERT = re.compile(r"double_stream_blocks\.0\.block\.ff_i\.experts\.(\d+)\.w1\.weight$")


def is_hidream_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS)


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers HiDreamImageTransformer2DModel config of the transformer under `prefix`."""
    rest = {k[len(prefix) :]: v for k, v in shapes.items() if k.startswith(prefix)}
    inner, patched_in = rest["x_embedder.proj.weight"]
    if inner % HEAD_DIM:
        raise ValueError(f"a HiDream transformer {inner} wide cannot have {HEAD_DIM}-wide heads")
    patch = 2  # ComfyUI's fixed patch size
    double = {int(m.group(1)) for k in rest if (m := _BLOCK["double"].match(k))}
    single = {int(m.group(1)) for k in rest if (m := _BLOCK["single"].match(k))}
    blocks = len(double) + len(single)
    experts = len({int(m.group(1)) for k in rest if (m := _EXPERT.match(k))})
    return {
        "patch_size": patch,
        "in_channels": patched_in // (patch * patch),
        "out_channels": rest["final_layer.linear.weight"][0] // (patch * patch),
        "num_layers": len(double),
        "num_single_layers": len(single),
        "attention_head_dim": HEAD_DIM,
        "num_attention_heads": inner // HEAD_DIM,
        "caption_channels": [rest[f"caption_projection.{blocks}.linear.weight"][1], rest["caption_projection.0.linear.weight"][1]],
        "text_emb_dim": rest["p_embedder.pooled_embedder.linear_1.weight"][1],
        "num_routed_experts": experts,
        "num_activated_experts": ACTIVE_EXPERTS,
        "axes_dims_rope": list(AXES_DIMS_ROPE),
        "max_resolution": [128, 128],
        "llama_layers": [min(i, LLAMA_LAYERS - 1) for i in range(blocks)],
    }


class HiDreamTranslator:
    """diffusers parameter names -> ComfyUI keys under `prefix` (the same names)."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        return Source(self.prefix + name.removeprefix("transformer."))


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import HiDreamImageTransformer2DModel

    with init_empty_weights():
        return HiDreamImageTransformer2DModel.from_config(dict(config))


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, (H/p)(W/p), p*p*C], ComfyUI's order (p1 p2 C)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def image_ids(rows: int, cols: int, batch: int, device: torch.device) -> torch.Tensor:
    ids = torch.zeros(rows, cols, 3, device=device)
    ids[..., 1] += torch.arange(rows, device=device)[:, None]
    ids[..., 2] += torch.arange(cols, device=device)[None, :]
    return ids.reshape(1, rows * cols, 3).repeat(batch, 1, 1)


def llama_by_layer(llama: torch.Tensor, layers: int) -> torch.Tensor:
    """[B, L, T, D] -> [layers, B, T, D], repeating the stack's last layer past its end (a smaller
    test encoder; a Llama-3.1-8B stack has ComfyUI's 32)."""
    stacked = llama.movedim(1, 0)
    if stacked.shape[0] < layers:
        stacked = torch.cat([stacked, stacked[-1:].expand(layers - stacked.shape[0], *stacked.shape[1:])])
    return stacked


class HiDreamNetwork(TransformerNetwork):
    """The UNet-shaped call around a HiDreamImageTransformer2DModel (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        added = added_cond_kwargs or {}
        pooled, llama = added.get("pooled"), added.get("llama")
        if pooled is None or llama is None:
            raise ValueError("HiDream conditioning needs its pooled output and Llama layers (encode with a HiDream CLIP)")
        config = self.transformer.config
        patch = int(config.patch_size)
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % patch, (-width) % patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        rows, cols = x.shape[-2] // patch, x.shape[-1] // patch
        batch = x.shape[0]
        tokens = patchify(x, patch)
        layers = max(config.llama_layers) + 1
        out = self.transformer(
            hidden_states=tokens,
            timesteps=timestep.to(x.dtype).expand(batch),
            encoder_hidden_states_t5=encoder_hidden_states,
            encoder_hidden_states_llama3=llama_by_layer(llama.to(x.dtype), layers),
            pooled_embeds=pooled.to(x.dtype),
            img_ids=image_ids(rows, cols, batch, x.device),
            img_sizes=[(rows, cols)] * batch,
            # All ones: the key scaling it drives is a no-op, and a given mask keeps diffusers from
            # padding a non-square latent (ComfyUI runs it unpadded).
            hidden_states_masks=torch.ones(batch, rows * cols, device=x.device, dtype=x.dtype),
            return_dict=False,
        )[0]
        return (-out[:, :, :height, :width],)
