"""The sampler registry: every name of ComfyUI 0.3.64's KSampler list, in ComfyUI's order,
mapped to a function.

A sampler function is `fn(model, x, sigmas, run, **options)` (see `base`); the options are what
ComfyUI's Sampler* nodes set (eta, s_noise, ...), and every sampler runs with none.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from comfyd.sampling.samplers.base import Denoiser, SamplerFn, SamplerRun, StepCallback
from comfyd.sampling.samplers.cfg_pp import (
    sample_dpmpp_2m_cfg_pp,
    sample_dpmpp_2s_ancestral_cfg_pp,
    sample_euler_ancestral_cfg_pp,
    sample_euler_cfg_pp,
)
from comfyd.sampling.samplers.dpm_solver import sample_dpm_adaptive, sample_dpm_fast
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
    sample_heunpp2,
    sample_lcm,
)
from comfyd.sampling.samplers.extras import EXTRA_NEEDS_UNCOND, EXTRA_SAMPLERS
from comfyd.sampling.samplers.lms import sample_lms
from comfyd.sampling.samplers.multistep import (
    sample_deis,
    sample_gradient_estimation,
    sample_gradient_estimation_cfg_pp,
    sample_ipndm,
    sample_ipndm_v,
    sample_res_multistep,
    sample_res_multistep_ancestral,
    sample_res_multistep_ancestral_cfg_pp,
    sample_res_multistep_cfg_pp,
)
from comfyd.sampling.samplers.sa_solver import sample_sa_solver, sample_sa_solver_pece
from comfyd.sampling.samplers.stochastic import sample_ddpm, sample_er_sde, sample_seeds_2, sample_seeds_3
from comfyd.sampling.samplers.unipc import _FINAL_SIGMA, sample_unipc, sample_unipc_bh2

SAMPLERS: dict[str, SamplerFn] = {
    "euler": sample_euler,
    "euler_cfg_pp": sample_euler_cfg_pp,
    "euler_ancestral": sample_euler_ancestral,
    "euler_ancestral_cfg_pp": sample_euler_ancestral_cfg_pp,
    "heun": sample_heun,
    "heunpp2": sample_heunpp2,
    "dpm_2": sample_dpm_2,
    "dpm_2_ancestral": sample_dpm_2_ancestral,
    "lms": sample_lms,
    "dpm_fast": sample_dpm_fast,
    "dpm_adaptive": sample_dpm_adaptive,
    "dpmpp_2s_ancestral": sample_dpmpp_2s_ancestral,
    "dpmpp_2s_ancestral_cfg_pp": sample_dpmpp_2s_ancestral_cfg_pp,
    "dpmpp_sde": sample_dpmpp_sde,
    "dpmpp_sde_gpu": partial(sample_dpmpp_sde, brownian_on_cpu=False),
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_cfg_pp": sample_dpmpp_2m_cfg_pp,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_2m_sde_gpu": partial(sample_dpmpp_2m_sde, brownian_on_cpu=False),
    "dpmpp_2m_sde_heun": partial(sample_dpmpp_2m_sde, solver_type="heun"),
    "dpmpp_2m_sde_heun_gpu": partial(sample_dpmpp_2m_sde, brownian_on_cpu=False, solver_type="heun"),
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "dpmpp_3m_sde_gpu": partial(sample_dpmpp_3m_sde, brownian_on_cpu=False),
    "ddpm": sample_ddpm,
    "lcm": sample_lcm,
    "ipndm": sample_ipndm,
    "ipndm_v": sample_ipndm_v,
    "deis": sample_deis,
    "res_multistep": sample_res_multistep,
    "res_multistep_cfg_pp": sample_res_multistep_cfg_pp,
    "res_multistep_ancestral": sample_res_multistep_ancestral,
    "res_multistep_ancestral_cfg_pp": sample_res_multistep_ancestral_cfg_pp,
    "gradient_estimation": sample_gradient_estimation,
    "gradient_estimation_cfg_pp": sample_gradient_estimation_cfg_pp,
    "er_sde": sample_er_sde,
    "seeds_2": sample_seeds_2,
    "seeds_3": sample_seeds_3,
    "sa_solver": sample_sa_solver,
    "sa_solver_pece": sample_sa_solver_pece,
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

# CFG++ samplers: they read the negative prompt's prediction, so the guider runs the negative
# prompt even at cfg 1 for them (ComfyUI's disable_cfg1_optimization).
NEEDS_UNCOND = frozenset(name for name in SAMPLER_NAMES if name.endswith("_cfg_pp")) | EXTRA_NEEDS_UNCOND

# ComfyUI's UniPC replaces a final sigma of 0 by 0.001 in the very sigmas tensor it is handed,
# so the sampler's closing inverse noise scaling sees 0.001: a flow model's result is divided by
# 1 - 0.001 (an EPS / V model's scaling ignores sigma). `final_sigma` gives that sigma.
FINAL_SIGMA_REPLACED = frozenset({"uni_pc", "uni_pc_bh2"})


def final_sigma(name: str, sigmas: Tensor) -> Tensor:
    """The last sigma the sampler `name` leaves for the inverse noise scaling."""
    if name in FINAL_SIGMA_REPLACED and float(sigmas[-1]) == 0.0:
        return torch.tensor(_FINAL_SIGMA, dtype=torch.float32)
    return sigmas[-1]


# Samplers that draw fresh noise at every step (ancestral, SDE and the like): the fidelity bar
# for them is 30 dB rather than 40.
STOCHASTIC = frozenset({
    "euler_ancestral", "euler_ancestral_cfg_pp", "dpm_2_ancestral", "dpmpp_2s_ancestral",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m_sde", "dpmpp_2m_sde_gpu",
    "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu", "dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm",
    "res_multistep_ancestral", "res_multistep_ancestral_cfg_pp", "er_sde", "seeds_2", "seeds_3",
    "sa_solver", "sa_solver_pece",
})  # fmt: skip


def get_sampler(name: str) -> SamplerFn:
    fn = SAMPLERS.get(name) or EXTRA_SAMPLERS.get(name)
    if fn is None:
        raise ValueError(f"unknown sampler {name!r}; expected one of {SAMPLER_NAMES}")
    return fn


__all__ = [
    "FINAL_SIGMA_REPLACED",
    "final_sigma",
    "INPAINT_NOISE_FROM_NEXT_SEED",
    "NEEDS_UNCOND",
    "SAMPLERS",
    "SAMPLER_NAMES",
    "STOCHASTIC",
    "Denoiser",
    "SamplerFn",
    "SamplerRun",
    "StepCallback",
    "get_sampler",
]
