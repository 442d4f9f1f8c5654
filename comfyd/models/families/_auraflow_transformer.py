"""The AuraFlow MMDiT: fal's file layout (the one ComfyUI reads) onto diffusers'
`AuraFlowTransformer2DModel`, and its config read from the shapes.

Stored layout (aura_flow_0.x.safetensors, `model.diffusion_model.` in all-in-one checkpoints):
`positional_encoding` [1, max_seq, width], `register_tokens`, `init_x_linear`, `cond_seq_linear`,
`t_embedder.mlp.{0,2}`, `double_layers.N.{attn.w{1,2}{q,k,v,o}, mlpX/mlpC.c_{fc1,fc2,proj}, modX.1,
modC.1}` (w1 the text stream, w2 the image stream), `single_layers.N.{attn.w1{q,k,v,o},
mlp.c_{fc1,fc2,proj}, modCX.1}`, `final_linear`, `modF.1` (stored (shift, scale); diffusers holds
(scale, shift)). ComfyUI builds the model with 12 heads whatever the width (its detection reads
only the positions, the text width and the block counts), so heads are width // 12 wide here too.

`AuraFlowNetwork` hands the latent, the timestep (sigma: ModelSamplingAuraFlow's multiplier is 1,
and both implementations scale it by 1000 inside their embedding) and the Pile-T5 context to the
transformer, padding odd latent sizes to whole patches and cropping the result; the patch
embedding takes its positions as ComfyUI does (`comfyui_patch_embed`).
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import SWAP_HALVES, Source

HEADS = 12  # ComfyUI's MMDiT default, never read from the file
MARKER_KEYS = ("double_layers.0.attn.w1q.weight", "cond_seq_linear.weight", "init_x_linear.weight")
_DOUBLE = re.compile(r"double_layers\.(\d+)\.")
_SINGLE = re.compile(r"single_layers\.(\d+)\.")


def is_auraflow_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS)


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers AuraFlowTransformer2DModel config values of the MMDiT stored under `prefix`."""
    hidden, patch_in = shapes[f"{prefix}init_x_linear.weight"]
    names = [k[len(prefix) :] for k in shapes if k.startswith(prefix)]
    positions = shapes[f"{prefix}positional_encoding"][1]
    side = math.isqrt(positions)
    if side * side != positions:
        raise ValueError(f"AuraFlow positional_encoding holds {positions} positions, not a square grid")
    if hidden % HEADS:
        raise ValueError(f"AuraFlow width {hidden} does not split into {HEADS} heads")
    out_features = shapes[f"{prefix}final_linear.weight"][0]
    patch = 2
    return {
        "sample_size": side * patch,
        "patch_size": patch,
        "in_channels": patch_in // (patch * patch),
        "num_mmdit_layers": len({int(m.group(1)) for k in names if (m := _DOUBLE.match(k))}),
        "num_single_dit_layers": len({int(m.group(1)) for k in names if (m := _SINGLE.match(k))}),
        "attention_head_dim": hidden // HEADS,
        "num_attention_heads": HEADS,
        "joint_attention_dim": shapes[f"{prefix}cond_seq_linear.weight"][1],
        "caption_projection_dim": hidden,
        "out_channels": out_features // (patch * patch),
        "pos_embed_max_size": positions,
    }


_TOP = {
    "pos_embed.pos_embed": "positional_encoding",
    "pos_embed.proj.": "init_x_linear.",
    "register_tokens": "register_tokens",
    "time_step_proj.linear_1.": "t_embedder.mlp.0.",
    "time_step_proj.linear_2.": "t_embedder.mlp.2.",
    "context_embedder.": "cond_seq_linear.",
    "proj_out.": "final_linear.",
}
_DOUBLE_PARTS = {
    "attn.to_q.": "attn.w2q.", "attn.to_k.": "attn.w2k.", "attn.to_v.": "attn.w2v.",
    "attn.to_out.0.": "attn.w2o.", "attn.add_q_proj.": "attn.w1q.", "attn.add_k_proj.": "attn.w1k.",
    "attn.add_v_proj.": "attn.w1v.", "attn.to_add_out.": "attn.w1o.",
    "ff.linear_1.": "mlpX.c_fc1.", "ff.linear_2.": "mlpX.c_fc2.", "ff.out_projection.": "mlpX.c_proj.",
    "ff_context.linear_1.": "mlpC.c_fc1.", "ff_context.linear_2.": "mlpC.c_fc2.",
    "ff_context.out_projection.": "mlpC.c_proj.", "norm1.linear.": "modX.1.",
    "norm1_context.linear.": "modC.1.",
}  # fmt: skip
_SINGLE_PARTS = {
    "attn.to_q.": "attn.w1q.", "attn.to_k.": "attn.w1k.", "attn.to_v.": "attn.w1v.",
    "attn.to_out.0.": "attn.w1o.", "norm1.linear.": "modCX.1.", "ff.linear_1.": "mlp.c_fc1.",
    "ff.linear_2.": "mlp.c_fc2.", "ff.out_projection.": "mlp.c_proj.",
}  # fmt: skip


class AuraFlowTranslator:
    """diffusers AuraFlowTransformer2DModel parameter names -> stored keys under `prefix`."""

    def __init__(self, config: Mapping[str, Any] | None = None, prefix: str = "") -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        p = self.prefix
        if name.startswith("norm_out.linear."):
            return Source(p + "modF.1." + name.rsplit(".", 1)[1], SWAP_HALVES)
        for ours, theirs in _TOP.items():
            if name.startswith(ours):
                return Source(p + theirs + name[len(ours) :])
        parts = name.split(".")
        stacks = {"joint_transformer_blocks": ("double_layers", _DOUBLE_PARTS),
                  "single_transformer_blocks": ("single_layers", _SINGLE_PARTS)}  # fmt: skip
        if parts[0] not in stacks or len(parts) < 3:
            return None
        stored, table = stacks[parts[0]]
        rest = ".".join(parts[2:])
        for ours, theirs in table.items():
            if rest.startswith(ours):
                return Source(f"{p}{stored}.{parts[1]}.{theirs}{rest[len(ours) :]}")
        return None


class AuraFlowNetworkTranslator(AuraFlowTranslator):
    """The same map for the `AuraFlowNetwork` wrapper's parameters (`transformer.` first)."""

    def source(self, name: str) -> Source | None:
        return super().source(name.removeprefix("transformer."))


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import AuraFlowTransformer2DModel

    with init_empty_weights():
        return AuraFlowTransformer2DModel.from_config(dict(config))


def comfyui_patch_embed(embed: nn.Module, latent: torch.Tensor) -> torch.Tensor:
    """diffusers' AuraFlowPatchEmbed with ComfyUI's positions: the grid is bilinearly enlarged
    when the latent has more patches on a side than it holds, and the window is centred as
    (grid - patches) // 2 (diffusers: grid // 2 - patches // 2, one off for odd counts)."""
    b, c, height, width = latent.shape
    patch = int(embed.patch_size)
    h, w = height // patch, width // patch
    tokens = latent.view(b, c, h, patch, w, patch).permute(0, 2, 4, 1, 3, 5).flatten(-3).flatten(1, 2)
    tokens = embed.proj(tokens)
    side = math.isqrt(int(embed.pos_embed_max_size))
    grid = embed.pos_embed.to(tokens.dtype).reshape(1, side, side, -1)
    if max(h, w) > side:
        side = max(h, w)
        grid = F.interpolate(grid.movedim(-1, 1), (side, side), mode="bilinear").movedim(1, -1)
    top, left = (side - h) // 2, (side - w) // 2
    return tokens + grid[:, top : top + h, left : left + w].reshape(1, h * w, -1)


class AuraFlowNetwork(TransformerNetwork):
    """The UNet-shaped call around an AuraFlowTransformer2DModel (see the module docstring)."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__(transformer)
        embed = transformer.pos_embed
        embed.forward = functools.partial(comfyui_patch_embed, embed)

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        height, width = x.shape[-2:]
        patch = int(self.transformer.config.patch_size)
        pad_h, pad_w = (-height) % patch, (-width) % patch
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="circular")
        out = self.transformer(
            hidden_states=x,
            encoder_hidden_states=encoder_hidden_states.to(x.dtype),
            timestep=timestep.to(x.dtype).expand(x.shape[0]),
            return_dict=False,
        )[0]
        return (out[:, :, :height, :width],)
