"""Samplers that only the Sampler* nodes make (they are not in KSampler's list): SamplerLCMUpscale's
LCM with latent upscaling between steps, and SamplerEulerCFGpp's "alternative" Euler CFG++.

As ComfyUI 0.3.64's comfy_extras/nodes_advanced_samplers.py computes them. LCM upscale draws its
noise from the process-wide generator, which ComfyUI seeded with the noise seed just before drawing
the initial noise: here a generator seeded the same way skips that initial draw and goes on from
there, so the same seed gives ComfyUI's numbers whenever nothing else drew from its global
generator in between.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from comfyd.sampling.latent_resize import resize_latent
from comfyd.sampling.samplers.base import Denoiser, SamplerRun, to_d

_SEED_MODULUS = 2**64


def sample_lcm_upscale(
    model: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    run: SamplerRun,
    total_upscale: float = 2.0,
    upscale_method: str = "bislerp",
    upscale_steps: int | None = None,
) -> Tensor:
    if upscale_steps is None:
        upscale_steps = max(len(sigmas) // 2 + 1, 2)
    else:
        upscale_steps = min(upscale_steps + 1, len(sigmas) + 1)
    upscales = np.linspace(1.0, total_upscale, upscale_steps)[1:]
    height, width = x.shape[-2], x.shape[-1]
    generator = torch.Generator(device="cpu").manual_seed(run.seed % _SEED_MODULUS)
    torch.randn(x.shape, generator=generator)  # the initial noise drawn from the same stream
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        run.report(i, x, denoised)
        x = denoised
        if i < len(upscales):
            x = resize_latent(x, round(width * upscales[i]), round(height * upscales[i]), upscale_method)
        if sig[i + 1] > 0:
            noise = torch.randn(x.shape, generator=generator).to(device=x.device, dtype=x.dtype)
            x = x + sigmas[i + 1].to(x.device) * noise
    return x


def sample_euler_cfg_pp_alternative(model: Denoiser, x: Tensor, sigmas: Tensor, run: SamplerRun) -> Tensor:
    """Euler stepping along x - denoised + uncond: the guided prediction's difference from the
    negative one is added back into the direction."""
    sig = sigmas.tolist()
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i])
        d = to_d(x - denoised + run.uncond(), sig[i], denoised)
        run.report(i, x, denoised)
        x = x + d * (sig[i + 1] - sig[i])
    return x


# Sampler* node names -> functions; looked up with the KSampler list (comfyd.sampling.samplers).
EXTRA_SAMPLERS = {
    "lcm_upscale": sample_lcm_upscale,
    "euler_cfg_pp_alternative": sample_euler_cfg_pp_alternative,
}
EXTRA_NEEDS_UNCOND = frozenset({"euler_cfg_pp_alternative"})
