"""The sampler registry: ComfyUI's sampler names, in ComfyUI's order, mapped to functions.

Only the samplers comfyd implements are listed; ComfyUI's other names (euler_cfg_pp, ddpm, ...)
fail validation with ComfyUI's own "value not in list" error.
"""

from __future__ import annotations

from functools import partial

from comfyd.sampling.samplers.base import Denoiser, SamplerFn, SamplerRun, StepCallback
from comfyd.sampling.samplers.dpmpp import (
    sample_dpmpp_2m,
    sample_dpmpp_2m_sde,
    sample_dpmpp_2s_ancestral,
    sample_dpmpp_3m_sde,
    sample_dpmpp_sde,
)
from comfyd.sampling.samplers.euler import (
    sample_dpm_2,
    sample_dpm_2_ancestral,
    sample_euler,
    sample_euler_ancestral,
    sample_heun,
    sample_lcm,
)
from comfyd.sampling.samplers.lms import sample_lms
from comfyd.sampling.samplers.unipc import sample_unipc, sample_unipc_bh2

SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_ancestral": sample_euler_ancestral,
    "heun": sample_heun,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": partial(sample_dpmpp_sde, brownian_on_cpu=False),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": partial(sample_dpmpp_2m_sde, brownian_on_cpu=False),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": partial(sample_dpmpp_3m_sde, brownian_on_cpu=False),
    "lcm": sample_lcm,
    # ComfyUI's "ddim" is euler; it differs only in the noise used to re-noise the kept region of
    # an inpaint mask (see INPAINT_NOISE_FROM_NEXT_SEED).
    "ddim": sample_euler,
    "uni_pc": sample_unipc,
    "uni_pc_bh2": sample_unipc_bh2,
}
SAMPLER_NAMES: list[str] = list(SAMPLERS)

# Samplers whose inpaint re-noising uses a fresh draw seeded with seed + 1 instead of the
# initial noise (ComfyUI's inpaint_options={"random": True}).
INPAINT_NOISE_FROM_NEXT_SEED = frozenset({"ddim"})


def get_sampler(name: str) -> SamplerFn:
    fn = SAMPLERS.get(name)
    if fn is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}")
    return fn


__all__ = [
    "INPAINT_NOISE_FROM_NEXT_SEED",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "Denoiser",
    "SamplerFn",
    "SamplerRun",
    "StepCallback",
    "get_sampler",
]
