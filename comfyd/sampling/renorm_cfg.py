"""RenormCFG's CFG function (Lumina Image 2.0; ComfyUI 0.3.64 comfy_extras/nodes_lumina2.py).

While sigma is below `cfg_trunc` (ComfyUI compares the sampler's timestep, which is sigma for
flow models; the default 100 keeps it on for every step):

    denoised = uncond + scale * (cond - uncond)
    denoised = denoised * (|cond| * renorm / |denoised|)   when |denoised| >= |cond| * renorm > 0

with norms over each sample's whole latent; at or above `cfg_trunc` the positive prediction alone.
A `renorm_cfg` of 0 turns the renormalisation off.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from comfyd.sampling.guidance import CfgArgs, CombineFn, GuidanceEnv


@dataclass(frozen=True)
class RenormCfg:
    cfg_trunc: float = 100.0
    renorm_cfg: float = 1.0

    def bind(self, env: GuidanceEnv) -> CombineFn:
        return self._combine

    def _combine(self, args: CfgArgs) -> Tensor:
        cond, uncond = args.cond_denoised, args.uncond_denoised
        if not bool(args.sigma.reshape(-1)[0] < self.cfg_trunc):
            return cond
        guided = uncond + args.cond_scale * (cond - uncond)
        if self.renorm_cfg > 0.0:
            dims = tuple(range(1, cond.ndim))
            limit = torch.linalg.vector_norm(cond, dim=dims, keepdim=True) * float(self.renorm_cfg)
            norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
            guided = torch.where(norm >= limit, guided * (limit / norm), guided)
        return guided
