"""The Wan 2.2 TI2V 5B network call: Wan's transformer (`_wan_transformer.py`, same layout, 48
latent channels in and out) with ComfyUI's per-frame timestep under a noise mask.

ComfyUI's WAN22.process_timestep: with a `denoise_mask` ([B, C, T, H, W], 1 where the latent is
sampled) the timestep becomes one per latent frame, the mask's mean over channels and pixels
times the step's timestep, so a frame the start image fixes (mask 0) is embedded at timestep 0.
ComfyUI's WanModel embeds each frame's timestep and repeats the modulation over that frame's
tokens; diffusers' WanTransformer3DModel takes a timestep per token ([B, tokens], as its Wan 2.2
TI2V pipeline passes it), so each frame's value is repeated over its (padded) h/2 x w/2 patches.
Without a mask the timestep stays one per sample.
"""

from __future__ import annotations

import torch

from comfyd.models.families._wan_transformer import WanNetwork


def frame_timesteps(timestep: torch.Tensor, denoise_mask: torch.Tensor) -> torch.Tensor:
    """[B] timesteps and a [B, C, T, H, W] mask -> [B, T]: ComfyUI's per-frame timesteps."""
    frames = denoise_mask.float().mean(dim=(1, 3, 4))
    return frames * timestep.float().view(-1, 1)


def token_timesteps(per_frame: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """[B, T] -> [B, T * tokens_per_frame], frame-major like the transformer's token order."""
    return per_frame.repeat_interleave(tokens_per_frame, dim=1)


class Wan22Network(WanNetwork):
    """WanNetwork reading `denoise_mask` from the vector conditioning (see the module docstring)."""

    def forward(
        self,
        x: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        added = dict(added_cond_kwargs or {})
        mask = added.pop("denoise_mask", None)
        if mask is not None and x.ndim == 5:
            if tuple(mask.shape[2:]) != tuple(x.shape[2:]):
                raise ValueError(f"the noise mask has shape {list(mask.shape)}, the latent {list(x.shape)}")
            pt, ph, pw = self.transformer.config.patch_size
            if pt != 1:
                raise ValueError("per-frame timesteps need a transformer with temporal patch size 1")
            per_frame = frame_timesteps(timestep.expand(x.shape[0]), mask)
            tokens = -(-x.shape[3] // ph) * -(-x.shape[4] // pw)
            timestep = token_timesteps(per_frame, tokens)
        return super().forward(x, timestep, encoder_hidden_states, added or None, return_dict)
