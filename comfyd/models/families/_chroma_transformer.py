"""The Chroma transformer: Flux's double and single blocks without per-block modulation layers,
every block's shift / scale / gate coming instead from one "distilled guidance" approximator.

Stored layout (the one ComfyUI reads, `model.diffusion_model.` in all-in-one files): Flux's
`img_in`, `txt_in`, `double_blocks.N.*` and `single_blocks.N.*` minus `*_mod` / `modulation`,
`final_layer.linear` (no adaLN), and `distilled_guidance_layer.{in_proj, layers.N.{in_layer,
out_layer}, norms.N.scale, out_proj}`; no `vector_in`, `time_in` or `guidance_in`. diffusers'
`ChromaTransformer2DModel` holds the same weights (the block parts are named as in Flux).

`ChromaNetwork` runs the blocks the way ComfyUI's Chroma does: the approximator turns
(timestep, guidance, row index) embeddings into one modulation row per use, 344 rows at least
(ComfyUI's fixed count, 3 per single block, 6 + 6 per double block, 2 for the final layer, which
takes the last two), so a model cut in depth reads the rows ComfyUI gives it. The guidance input
is the conditioning's (FluxGuidance), 0 when none is set; diffusers always feeds 0.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models.families._flux_inputs import pack, position_ids, unpack
from comfyd.models.families._flux_transformer import FluxTranslator, rope_axes
from comfyd.models.families._network import TransformerNetwork
from comfyd.models.keymap import Source

MARKER_KEYS = ("double_blocks.0.img_attn.qkv.weight", "img_in.weight", "distilled_guidance_layer.in_proj.weight")
MODULATION_ROWS = 344  # ComfyUI's count (19 double and 38 single blocks)
TIME_CHANNELS = 16  # each of the timestep and guidance embeddings
INDEX_CHANNELS = 32
APPROXIMATOR_EPS = 1e-6
_DOUBLE = re.compile(r"double_blocks\.(\d+)\.")
_SINGLE = re.compile(r"single_blocks\.(\d+)\.")
_LAYER = re.compile(r"distilled_guidance_layer\.layers\.(\d+)\.")


def is_chroma_transformer(keys: set[str], prefix: str) -> bool:
    return all(prefix + key in keys for key in MARKER_KEYS) and f"{prefix}nerf_blocks.0.norm.scale" not in keys


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """diffusers ChromaTransformer2DModel config values of the transformer under `prefix`."""
    hidden, in_channels = shapes[f"{prefix}img_in.weight"]
    head_dim = shapes[f"{prefix}double_blocks.0.img_attn.norm.query_norm.scale"][0]
    approximator_hidden, approximator_in = shapes[f"{prefix}distilled_guidance_layer.in_proj.weight"]
    names = [k[len(prefix) :] for k in shapes if k.startswith(prefix)]
    return {
        "patch_size": 1,
        "in_channels": in_channels,
        "out_channels": shapes[f"{prefix}final_layer.linear.weight"][0],
        "num_layers": len({int(m.group(1)) for k in names if (m := _DOUBLE.match(k))}),
        "num_single_layers": len({int(m.group(1)) for k in names if (m := _SINGLE.match(k))}),
        "attention_head_dim": head_dim,
        "num_attention_heads": hidden // head_dim,
        "joint_attention_dim": shapes[f"{prefix}txt_in.weight"][1],
        "axes_dims_rope": list(rope_axes(head_dim)),
        "approximator_num_channels": approximator_in,
        "approximator_hidden_dim": approximator_hidden,
        "approximator_layers": len({int(m.group(1)) for k in names if (m := _LAYER.match(k))}),
    }


class ChromaTranslator(FluxTranslator):
    """diffusers ChromaTransformer2DModel parameter names -> the stored keys under `prefix`."""

    def source(self, name: str) -> Source | None:
        p = self.prefix
        if name.startswith("distilled_guidance_layer."):
            rest = name[len("distilled_guidance_layer.") :]
            rest = rest.replace(".linear_1.", ".in_layer.").replace(".linear_2.", ".out_layer.")
            if rest.startswith("norms.") and rest.endswith(".weight"):
                rest = rest[: -len("weight")] + "scale"
            return Source(p + "distilled_guidance_layer." + rest)
        if name.startswith("norm_out."):
            return None  # no parameters: the final modulation comes from the approximator
        return super().source(name)


class ChromaNetworkTranslator(ChromaTranslator):
    """The same map for the parameters of the `ChromaNetwork` wrapper (`transformer.` first)."""

    def source(self, name: str) -> Source | None:
        return super().source(name.removeprefix("transformer."))


def empty_transformer(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from diffusers import ChromaTransformer2DModel

    with init_empty_weights():
        return ChromaTransformer2DModel.from_config(dict(config))


def sinusoid(values: torch.Tensor, channels: int) -> torch.Tensor:
    """[N, channels] float32 embedding of `values` scaled by 1000: cosines, then sines."""
    half = channels // 2
    frequencies = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    angles = (1000 * values)[:, None].float() * frequencies[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


class ChromaNetwork(TransformerNetwork):
    """The UNet-shaped call around a ChromaTransformer2DModel (see the module docstring)."""

    def modulations(self, timestep: torch.Tensor, guidance: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[B, rows, hidden]: the approximator's output for every modulation row."""
        t = self.transformer
        config = t.config
        rows = max(MODULATION_ROWS, 3 * config.num_single_layers + 12 * config.num_layers + 2)
        batch = timestep.shape[0]
        device = timestep.device
        time_and_guidance = torch.cat(
            [sinusoid(timestep, TIME_CHANNELS), sinusoid(guidance, TIME_CHANNELS)], dim=1
        ).to(dtype)
        index = sinusoid(torch.arange(rows, device=device), INDEX_CHANNELS).to(dtype)
        vector = torch.cat(
            [time_and_guidance.unsqueeze(1).repeat(1, rows, 1), index.unsqueeze(0).repeat(batch, 1, 1)], dim=-1
        )
        approximator = t.distilled_guidance_layer
        x = approximator.in_proj(vector)
        for layer, norm in zip(approximator.layers, approximator.norms, strict=True):
            x = x + layer(F.rms_norm(x, norm.weight.shape, norm.weight.to(x.dtype), APPROXIMATOR_EPS))
        return approximator.out_proj(x)

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
        t = self.transformer
        # SkipLayerGuidanceDiT: these double / single blocks hand their streams on unchanged.
        skipped, skipped_single = set(skip_layers or ()), set(skip_single_layers or ())
        batch, _, height, width = x.shape
        packed, rows, cols = pack(x)  # 2x2 patches, padded by wrapping as ComfyUI pads
        guidance = (added_cond_kwargs or {}).get("guidance")
        if guidance is None:
            guidance = torch.zeros(batch)
        timestep = timestep.to(packed.device).float().reshape(-1).expand(batch)
        guidance = guidance.to(packed.device).float().reshape(-1).expand(batch)
        mods = self.modulations(timestep, guidance, packed.dtype)
        hidden = t.x_embedder(packed)
        context = t.context_embedder(encoder_hidden_states)
        ids = torch.cat([torch.zeros(context.shape[1], 3, device=x.device), position_ids(rows, cols).to(x.device)])
        rotary = t.pos_embed(ids)
        singles, doubles = len(t.single_transformer_blocks), len(t.transformer_blocks)
        for i, block in enumerate(t.transformer_blocks):
            if i in skipped:
                continue
            img_row, txt_row = 3 * singles + 6 * i, 3 * singles + 6 * doubles + 6 * i
            temb = torch.cat([mods[:, img_row : img_row + 6], mods[:, txt_row : txt_row + 6]], dim=1)
            context, hidden = block(
                hidden_states=hidden, encoder_hidden_states=context, temb=temb, image_rotary_emb=rotary
            )
        hidden = torch.cat([context, hidden], dim=1)
        for i, block in enumerate(t.single_transformer_blocks):
            if i in skipped_single:
                continue
            hidden = block(hidden_states=hidden, temb=mods[:, 3 * i : 3 * i + 3], image_rotary_emb=rotary)
        hidden = t.norm_out(hidden[:, context.shape[1] :], mods[:, -2:])
        return (unpack(t.proj_out(hidden), rows, cols)[:, :, :height, :width],)
