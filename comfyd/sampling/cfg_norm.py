"""CFGNorm's post-CFG function (ComfyUI 0.3.64 comfy_extras/nodes_cfg.py, used with Qwen-Image):
the guided prediction is scaled down, per latent cell, to at most the norm of the positive
prompt's own prediction, then multiplied by `strength`.

    scale = clamp(|cond_denoised| / (|denoised| + 1e-8), 0, 1)    norms over the channel axis
    denoised = denoised * scale * strength
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from comfyd.sampling.guidance import CfgArgs, GuidanceEnv, PostFn


@dataclass(frozen=True)
class CfgNorm:
    strength: float = 1.0

    def bind(self, env: GuidanceEnv) -> PostFn:
        return self._apply

    def _apply(self, denoised: Tensor, args: CfgArgs) -> Tensor:
        cond_norm = torch.norm(args.cond_denoised, dim=1, keepdim=True)
        norm = torch.norm(denoised, dim=1, keepdim=True)
        scale = (cond_norm / (norm + 1e-8)).clamp(min=0.0, max=1.0)
        return denoised * scale * self.strength
