"""The Wan 2.2 TI2V 5B network call: Wan's transformer (`_wan_transformer.py`, same layout, 48
latent channels in and out) with ComfyUI's per-frame timestep under a noise mask.

ComfyUI's WAN22.process_timestep: with a `denoise_mask` ([B, C, T, H, W], 1 where the latent is
sampled) the timestep becomes one per latent frame, the mask's mean over channels and pixels
times the step's timestep, so a frame the start image fixes (mask 0) is embedded at timestep 0.
ComfyUI's WanModel embeds each frame's timestep and applies that frame's modulation to all its
tokens. diffusers' WanTransformer3DModel can only take a timestep per token ([B, tokens], as its
Wan 2.2 TI2V pipeline passes it), which builds the time embedding and the six modulation vectors
of every block for every token: at 1280x704x121 (~110k tokens) tens of GB. So under a mask
`per_frame_forward` runs the transformer's own modules in diffusers' order with the embedding
and modulation kept per frame and broadcast over each frame's tokens (the tokens are frame-major):
the same arithmetic element for element as the per-token call (`token_timesteps`, held equal in
the tests), in ComfyUI's memory. Without a mask the timestep stays one per sample and the
transformer runs as it is.
"""

from __future__ import annotations

from typing import Any

import torch.nn.functional as F
from torch import Tensor

from comfyd.models.families._wan_transformer import WanNetwork


def frame_timesteps(timestep: Tensor, denoise_mask: Tensor) -> Tensor:
    """[B] timesteps and a [B, C, T, H, W] mask -> [B, T]: ComfyUI's per-frame timesteps."""
    frames = denoise_mask.float().mean(dim=(1, 3, 4))
    return frames * timestep.float().view(-1, 1)


def token_timesteps(per_frame: Tensor, tokens_per_frame: int) -> Tensor:
    """[B, T] -> [B, T * tokens_per_frame], frame-major like the transformer's token order (what
    diffusers' per-token call takes)."""
    return per_frame.repeat_interleave(tokens_per_frame, dim=1)


def _frames(x: Tensor, frames: int) -> Tensor:
    return x.unflatten(1, (frames, -1))  # [B, T * P, D] -> [B, T, P, D]


def _tokens(x: Tensor) -> Tensor:
    return x.flatten(1, 2)


def _block(block: Any, h: Tensor, context: Tensor, modulation: Tensor, rotary: Any, frames: int) -> Tensor:
    """One WanTransformerBlock with [B, T, 6, D] per-frame modulation (diffusers' block order)."""
    shift, scale, gate, c_shift, c_scale, c_gate = (block.scale_shift_table.unsqueeze(0) + modulation.float()).chunk(
        6, dim=2
    )  # each [B, T, 1, D]
    norm = _tokens(_frames(block.norm1(h.float()), frames) * (1 + scale) + shift).type_as(h)
    attn = block.attn1(norm, None, None, rotary)
    h = _tokens(_frames(h.float(), frames) + _frames(attn, frames) * gate).type_as(h)
    norm = block.norm2(h.float()).type_as(h)
    h = h + block.attn2(norm, context, None, None)
    norm = _tokens(_frames(block.norm3(h.float()), frames) * (1 + c_scale) + c_shift).type_as(h)
    ff = block.ffn(norm)
    return _tokens(_frames(h.float(), frames) + _frames(ff.float(), frames) * c_gate).type_as(h)


def per_frame_forward(model: Any, x: Tensor, per_frame: Tensor, context: Tensor) -> Tensor:
    """A WanTransformer3DModel on [B, C, T, H, W] (whole patches) with [B, T] timesteps."""
    batch, _, frames, height, width = x.shape
    pt, ph, pw = model.config.patch_size
    if pt != 1:
        raise ValueError("per-frame timesteps need a transformer with temporal patch size 1")
    rotary = model.rope(x)
    h = model.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
    temb, projection, context, _ = model.condition_embedder(
        per_frame.flatten(), context, None, timestep_seq_len=frames
    )  # temb [B, T, D], projection [B, T, 6 D]
    projection = projection.unflatten(2, (6, -1))
    for block in model.blocks:
        h = _block(block, h, context, projection, rotary, frames)
    shift, scale = (model.scale_shift_table.unsqueeze(0).to(temb.device) + temb.unsqueeze(2)).chunk(2, dim=2)
    h = _tokens(_frames(model.norm_out(h.float()), frames) * (1 + scale) + shift).type_as(h)
    h = model.proj_out(h)
    h = h.reshape(batch, frames, height // ph, width // pw, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return h.flatten(6, 7).flatten(4, 5).flatten(2, 3)


class Wan22Network(WanNetwork):
    """WanNetwork reading `denoise_mask` from the vector conditioning (see the module docstring)."""

    def forward(
        self,
        x: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        added_cond_kwargs: dict[str, Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[Tensor]:
        added = dict(added_cond_kwargs or {})
        mask = added.pop("denoise_mask", None)
        if mask is None or x.ndim != 5:
            return super().forward(x, timestep, encoder_hidden_states, added or None, return_dict)
        if tuple(mask.shape[2:]) != tuple(x.shape[2:]):
            raise ValueError(f"the noise mask has shape {list(mask.shape)}, the latent {list(x.shape)}")
        if x.shape[1] != self.transformer.config.in_channels:
            raise ValueError(f"the model takes {self.transformer.config.in_channels} latent channels, got {x.shape[1]}")
        _, _, frames, height, width = x.shape
        _, ph, pw = self.transformer.config.patch_size
        pads = (0, (-width) % pw, 0, (-height) % ph, 0, 0)
        if any(pads):  # whole patches, wrapping around (ComfyUI's pad_to_patch_size)
            x = F.pad(x, pads, mode="circular")
        per_frame = frame_timesteps(timestep.expand(x.shape[0]), mask)
        out = per_frame_forward(self.transformer, x, per_frame.to(x.dtype), encoder_hidden_states.to(x.dtype))
        return (out[:, :, :frames, :height, :width],)
