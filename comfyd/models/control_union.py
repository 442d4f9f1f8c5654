"""Union ControlNets (ControlNet++, "controlnet-union"): one ControlNet for several control types,
computed as ComfyUI 0.3.64's comfy/cldm/cldm.py computes them.

A union file is a diffusers-layout ControlNet with four extra groups, stored under the names
diffusers' ControlNetUnionModel uses (which are also the names ComfyUI reads):
- `task_embedding` [types, 320]: one learnt vector per control type;
- `control_add_embedding.linear_1/2`: an MLP over the sinusoidal embedding of the control-type
  one-hot vector, added to the timestep embedding;
- `transformer_layes.N.*`: a residual attention block (CLIP-style, QuickGELU MLP);
- `spatial_ch_projs`: a linear map from the transformer's width to the hint features' channels.

ComfyUI's math (which differs from diffusers' ControlNetUnionModel: diffusers appends the
noisy input's mean as a second token and runs nn.MultiheadAttention across the batch axis):
- always: the timestep embedding gets `control_add_embedding(one_hot(types))` added, an all-zero
  one-hot when no type is set (SetUnionControlNetType "auto", or no such node at all);
- with a type set: the hint features `h` (the hint encoder's output) are averaged over space,
  the type's task embedding is added, that one token goes through the transformer, and
  `spatial_ch_projs` of the result is added to `h` as a per-channel bias;
- with no type: `h` is used as a plain ControlNet uses it.
The rest (input conv, down blocks, middle block, zero convolutions) is the ControlNet's.

The union parts are attached to a diffusers ControlNetModel under those names, so the file's
keys load one to one; `union_controlnet_forward` runs the whole network.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

TASK_EMBEDDING = "task_embedding"
ADD_EMBEDDING_KEY = "control_add_embedding.linear_1.weight"
TRANSFORMER_HEADS = 8  # ComfyUI builds the union transformer with 8 heads whatever the width
# SetUnionControlNetType's choices, in ComfyUI's order; the value is the union model's type index.
UNION_TYPES = {
    "openpose": 0,
    "depth": 1,
    "hed/pidi/scribble/ted": 2,
    "canny/lineart/anime_lineart/mlsd": 3,
    "normal": 4,
    "segment": 5,
    "tile": 6,
    "repaint": 7,
}


class UnionLayoutError(ValueError):
    """A union ControlNet whose extra tensors do not fit together."""


@dataclass(frozen=True)
class UnionConfig:
    types: int  # control types the model knows (task_embedding rows)
    width: int  # the transformer's width (320 in every released model)
    layers: int  # residual attention blocks (1 in every released model)
    type_embedding_dim: int  # sinusoidal width per control type (256)
    projection: int  # spatial_ch_projs output channels: the hint features' channels


def union_config(shapes: Mapping[str, tuple[int, ...]], name: str) -> UnionConfig:
    """The union parts' sizes, read from the file's shapes."""
    try:
        types, width = shapes[TASK_EMBEDDING]
        add_in = shapes[ADD_EMBEDDING_KEY][1]
        projection = shapes["spatial_ch_projs.weight"][0]
    except (KeyError, ValueError):
        raise UnionLayoutError(
            f"{name}: a union ControlNet needs task_embedding [types, width], "
            "control_add_embedding.linear_1 and spatial_ch_projs"
        ) from None
    layers = len({k.split(".")[1] for k in shapes if k.startswith("transformer_layes.")})
    if types <= 0 or add_in % types or layers == 0 or width % TRANSFORMER_HEADS:
        raise UnionLayoutError(
            f"{name}: union ControlNet parts do not fit together ({types} types, transformer width {width}, "
            f"{layers} layers, type embedding input {add_in})"
        )
    return UnionConfig(types, width, layers, add_in // types, projection)


def attach_union_parts(module: nn.Module, config: UnionConfig, time_embed_dim: int) -> None:
    """Add the union tensors to a (meta or real) diffusers ControlNetModel, under the file's names."""
    from diffusers.models.controlnets.controlnet_union import ResidualAttentionBlock
    from diffusers.models.embeddings import TimestepEmbedding

    module.task_embedding = nn.Parameter(torch.empty(config.types, config.width))
    module.transformer_layes = nn.ModuleList(
        [ResidualAttentionBlock(config.width, TRANSFORMER_HEADS) for _ in range(config.layers)]
    )
    module.spatial_ch_projs = nn.Linear(config.width, config.projection)
    module.control_add_embedding = TimestepEmbedding(config.types * config.type_embedding_dim, time_embed_dim)


def union_types(module: nn.Module) -> int:
    return int(module.task_embedding.shape[0])


def check_control_type(module: nn.Module, control_type: Sequence[int], name: str) -> None:
    known = union_types(module)
    if any(c >= known or c < 0 for c in control_type):
        worst = max(control_type)
        label = {v: k for k, v in UNION_TYPES.items()}.get(worst, str(worst))
        raise ValueError(
            f"control type {label} ({worst}) is out of range for {name}, which knows {known} control types "
            "(the ProMax union model knows all of them)"
        )


def type_embedding(module: nn.Module, control_type: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """`control_add_embedding` of the types' one-hot vector: [1, time embedding width]."""
    from diffusers.models.embeddings import get_timestep_embedding

    types = union_types(module)
    one_hot = torch.zeros(types, device=device)
    if control_type:
        one_hot[list(control_type)] = 1.0
    dim = module.control_add_embedding.linear_1.in_features // types
    sinusoid = get_timestep_embedding(one_hot, dim, flip_sin_to_cos=True, downscale_freq_shift=0)
    return module.control_add_embedding(sinusoid.to(dtype).reshape(1, types * dim))


def fuse_hint(module: nn.Module, features: Tensor, control_type: Sequence[int]) -> Tensor:
    """The hint features with the type's transformer output added per channel (ComfyUI runs the
    transformer over one token, the first type's, and adds its projection once per type)."""
    token = features.mean(dim=(2, 3))
    token = token + module.task_embedding[control_type[0]].to(dtype=token.dtype, device=token.device)
    # nn.MultiheadAttention takes [sequence, batch, width]: attend within each sample.
    x = token.unsqueeze(0)
    for layer in module.transformer_layes:
        x = layer(x)
    x = x.transpose(0, 1)
    fused = None
    for index in range(len(control_type)):
        if index >= x.shape[1]:
            raise ValueError("a union ControlNet takes one control type at a time")
        alpha = module.spatial_ch_projs(x[:, index])[:, :, None, None]
        fused = features + alpha if fused is None else fused + features + alpha
    assert fused is not None
    return fused


def union_controlnet_forward(
    module: Any,
    sample: Tensor,
    timestep: Tensor,
    context: Tensor,
    hint: Tensor,
    control_type: Sequence[int],
    added: Mapping[str, Tensor] | None,
) -> tuple[list[Tensor], Tensor]:
    """The union ControlNet's residuals (down, middle), as diffusers' ControlNetModel returns them."""
    timesteps = timestep.reshape(-1).to(sample.device)
    if timesteps.shape[0] != sample.shape[0]:
        timesteps = timesteps.expand(sample.shape[0])
    t_emb = module.time_proj(timesteps).to(dtype=sample.dtype)
    emb = module.time_embedding(t_emb)
    emb = emb + type_embedding(module, control_type, emb.dtype, emb.device)
    if module.config.addition_embed_type == "text_time":
        if not added or "text_embeds" not in added or "time_ids" not in added:
            raise ValueError("this union ControlNet takes SDXL's vector conditioning (text_embeds and time_ids)")
        text_embeds = added["text_embeds"]
        time_embeds = module.add_time_proj(added["time_ids"].flatten()).reshape(text_embeds.shape[0], -1)
        emb = emb + module.add_embedding(torch.cat([text_embeds, time_embeds], dim=-1).to(emb.dtype))
    elif module.config.addition_embed_type is not None:
        raise ValueError(f"union ControlNet with addition_embed_type {module.config.addition_embed_type!r}")

    h = module.conv_in(sample)
    features = module.controlnet_cond_embedding(hint)
    if control_type:
        features = fuse_hint(module, features, control_type)
    h = h + features

    residuals = [h]
    for block in module.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=context)
        else:
            h, res = block(hidden_states=h, temb=emb)
        residuals.extend(res)
    if module.mid_block is not None:
        if getattr(module.mid_block, "has_cross_attention", False):
            h = module.mid_block(h, emb, encoder_hidden_states=context)
        else:
            h = module.mid_block(h, emb)
    down = [zero_conv(r) for r, zero_conv in zip(residuals, module.controlnet_down_blocks, strict=True)]
    return down, module.controlnet_mid_block(h)
