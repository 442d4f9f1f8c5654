"""Fidelity cases for the samplers beyond the first set and for the custom-sampling nodes.

Imported by make_cases.py, which writes them beside the others: one KSampler case per sampler
name (64x64, 8 steps, normal scheduler, like the first set), and small SamplerCustom /
SamplerCustomAdvanced graphs for the schedulers, sigma tools, guiders, noise sources and the
Sampler* nodes that configure one sampler.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Added after the first set: every other name of ComfyUI 0.3.64's KSampler list, except
# dpm_adaptive: at the default tolerance it takes far more model calls than a case can afford
# here; custom_split_denoise_adaptive runs it (order 2) through SamplerDPMAdaptative instead.
NEW_SAMPLERS = [
    "euler_cfg_pp", "euler_ancestral_cfg_pp", "heunpp2", "dpm_fast",
    "dpmpp_2s_ancestral_cfg_pp", "dpmpp_2m_cfg_pp", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu",
    "ddpm", "ipndm", "ipndm_v", "deis", "res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral",
    "res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp", "er_sde",
    "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece",
]  # fmt: skip

# Sampler* nodes whose sampler draws noise per step (the 30 dB bar), with the option that can
# turn the noise off.
STOCHASTIC_SAMPLER_NODES = {
    "SamplerEulerAncestral", "SamplerEulerAncestralCFGPP", "SamplerDPMPP_2S_Ancestral", "SamplerDPMPP_SDE",
    "SamplerDPMPP_2M_SDE", "SamplerDPMPP_3M_SDE", "SamplerER_SDE", "SamplerSASolver", "SamplerLCMUpscale",
}  # fmt: skip


def node(class_type: str, **inputs: Any) -> dict[str, Any]:
    return {"class_type": class_type, "inputs": inputs}


def _custom(base: Callable[[], dict[str, Any]], sampler: dict[str, Any], sigmas: dict[str, Any],
            cfg: float = 7.5, seed: int = 156680208700286) -> dict[str, Any]:
    """The default graph with SamplerCustom (node 3) fed by a sampler (30) and sigmas (31)."""
    w = base()
    w["30"] = sampler
    w["31"] = sigmas
    w["3"] = node("SamplerCustom", model=["4", 0], add_noise=True, noise_seed=seed, cfg=cfg,
                  positive=["6", 0], negative=["7", 0], sampler=["30", 0], sigmas=["31", 0],
                  latent_image=["5", 0])
    return w


def _select(name: str) -> dict[str, Any]:
    return node("KSamplerSelect", sampler_name=name)


def _basic(scheduler: str, steps: int, denoise: float = 1.0) -> dict[str, Any]:
    return node("BasicScheduler", model=["4", 0], scheduler=scheduler, steps=steps, denoise=denoise)


def _advanced(noise: list[Any], guider: list[Any], sampler: list[Any], sigmas: list[Any],
              latent: list[Any]) -> dict[str, Any]:
    return node("SamplerCustomAdvanced", noise=noise, guider=guider, sampler=sampler, sigmas=sigmas,
                latent_image=latent)


def sampling_cases(base: Callable[[], dict[str, Any]],
                   with_sampler: Callable[..., dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for sampler in NEW_SAMPLERS:
        out[f"sampler_{sampler}"] = with_sampler(sampler, "normal")
    out["cfg_1_euler_cfg_pp"] = with_sampler("euler_cfg_pp", "karras", cfg=1.0)  # uncond still run

    # Schedulers and sigma tools through SamplerCustom.
    out["custom_karras"] = _custom(base, _select("dpmpp_2m"), node(
        "KarrasScheduler", steps=8, sigma_max=14.614642, sigma_min=0.0291675, rho=7.0))
    out["custom_exponential_2m_sde_heun"] = _custom(base, node(
        "SamplerDPMPP_2M_SDE", solver_type="heun", eta=0.7, s_noise=0.9, noise_device="cpu"), node(
        "ExponentialScheduler", steps=8, sigma_max=10.0, sigma_min=0.05))
    out["custom_polyexponential"] = _custom(base, _select("heun"), node(
        "PolyexponentialScheduler", steps=6, sigma_max=14.614642, sigma_min=0.0291675, rho=1.5))
    out["custom_beta"] = _custom(base, _select("euler"), node(
        "BetaSamplingScheduler", model=["4", 0], steps=8, alpha=0.5, beta=0.7))
    out["custom_align_your_steps"] = _custom(base, _select("dpmpp_2m"), node(
        "AlignYourStepsScheduler", model_type="SD1", steps=8, denoise=1.0))
    out["custom_sd_turbo"] = _custom(base, node("SamplerEulerAncestral", eta=1.0, s_noise=1.0), node(
        "SDTurboScheduler", model=["4", 0], steps=3, denoise=1.0), cfg=1.0)

    # SamplerCustomAdvanced in two stages: SplitSigmas, RandomNoise then DisableNoise, CFGGuider.
    w = base()
    w["30"] = _basic("karras", 10)
    w["31"] = node("SplitSigmas", sigmas=["30", 0], step=6)
    w["32"] = node("RandomNoise", noise_seed=7)
    w["33"] = node("CFGGuider", model=["4", 0], positive=["6", 0], negative=["7", 0], cfg=7.0)
    w["34"] = _select("dpmpp_2m")
    w["35"] = node("DisableNoise")
    w["36"] = _select("euler")
    w["3"] = _advanced(["32", 0], ["33", 0], ["34", 0], ["31", 0], ["5", 0])
    w["37"] = _advanced(["35", 0], ["33", 0], ["36", 0], ["31", 1], ["3", 0])
    w["8"]["inputs"]["samples"] = ["37", 0]
    out["custom_advanced_split"] = w

    # SplitSigmasDenoise, and the second stage's denoised_output.
    w = base()
    w["30"] = _basic("normal", 8)
    w["31"] = node("SplitSigmasDenoise", sigmas=["30", 0], denoise=0.4)
    w["32"] = node("RandomNoise", noise_seed=11)
    w["33"] = node("CFGGuider", model=["4", 0], positive=["6", 0], negative=["7", 0], cfg=6.0)
    w["34"] = node("SamplerLMS", order=3)
    w["35"] = node("DisableNoise")
    w["36"] = node("SamplerDPMAdaptative", order=2, rtol=0.05, atol=0.0078, h_init=0.05, pcoeff=0.0,
                   icoeff=1.0, dcoeff=0.0, accept_safety=0.81, eta=0.0, s_noise=1.0)
    w["3"] = _advanced(["32", 0], ["33", 0], ["34", 0], ["31", 0], ["5", 0])
    w["37"] = _advanced(["35", 0], ["33", 0], ["36", 0], ["31", 1], ["3", 0])
    w["8"]["inputs"]["samples"] = ["37", 1]
    out["custom_split_denoise_adaptive"] = w

    # DualCFGGuider, both styles.
    for style in ("regular", "nested"):
        w = base()
        w["30"] = _basic("karras", 8)
        w["31"] = node("RandomNoise", noise_seed=5)
        w["32"] = node("CLIPTextEncode", text="a stormy sea at night", clip=["4", 1])
        w["33"] = node("DualCFGGuider", model=["4", 0], cond1=["6", 0], cond2=["32", 0], negative=["7", 0],
                       cfg_conds=5.0, cfg_cond2_negative=3.0, style=style)
        w["34"] = _select("euler")
        w["3"] = _advanced(["31", 0], ["33", 0], ["34", 0], ["30", 0], ["5", 0])
        out[f"custom_dual_cfg_{style}"] = w

    # Inversion: encode a picture, run the flipped schedule without noise under BasicGuider
    # (back towards noise), then sample down again from there.
    w = base()
    w["20"] = node("LoadImage", image="parity-input.png")
    w["21"] = node("VAEEncode", pixels=["20", 0], vae=["4", 2])
    w["30"] = _basic("normal", 8, denoise=0.5)
    w["31"] = node("FlipSigmas", sigmas=["30", 0])
    w["32"] = node("DisableNoise")
    w["33"] = node("BasicGuider", model=["4", 0], conditioning=["6", 0])
    w["34"] = _select("euler")
    w["35"] = node("CFGGuider", model=["4", 0], positive=["6", 0], negative=["7", 0], cfg=3.0)
    w["36"] = _advanced(["32", 0], ["33", 0], ["34", 0], ["31", 0], ["21", 0])
    w["3"] = _advanced(["32", 0], ["35", 0], ["34", 0], ["30", 0], ["36", 0])
    out["custom_flip_sigmas_inversion"] = w

    # The other Sampler* nodes, three to a graph (one SamplerCustom stage each over SplitSigmas).
    groups = {
        "custom_sampler_nodes_a": [
            node("SamplerEulerAncestral", eta=0.5, s_noise=1.1),
            node("SamplerDPMPP_2S_Ancestral", eta=0.6, s_noise=1.0),
            node("SamplerDPMPP_SDE", eta=0.8, s_noise=1.0, r=0.4, noise_device="cpu"),
        ],
        "custom_sampler_nodes_b": [
            node("SamplerDPMPP_3M_SDE", eta=0.5, s_noise=1.0, noise_device="cpu"),
            node("SamplerEulerAncestralCFGPP", eta=0.7, s_noise=1.0),
            node("SamplerER_SDE", solver_type="Reverse-time SDE", max_stage=2, eta=0.5, s_noise=1.0),
        ],
        "custom_sampler_nodes_c": [
            node("SamplerSASolver", model=["4", 0], eta=0.8, sde_start_percent=0.1, sde_end_percent=0.9,
                 s_noise=1.0, predictor_order=2, corrector_order=3, use_pece=False, simple_order_2=True),
            node("SamplerER_SDE", solver_type="ODE", max_stage=3, eta=1.0, s_noise=1.0),
            node("SamplerDPMPP_2M_SDE", solver_type="midpoint", eta=0.0, s_noise=1.0, noise_device="gpu"),
        ],
    }
    for name, samplers in groups.items():
        w = base()
        w["30"] = _basic("karras", 9)
        w["31"] = node("SplitSigmas", sigmas=["30", 0], step=3)
        w["32"] = node("SplitSigmas", sigmas=["31", 1], step=3)
        stages = [["31", 0], ["32", 0], ["32", 1]]
        latent: list[Any] = ["5", 0]
        for k, (sampler, sigmas) in enumerate(zip(samplers, stages, strict=True)):
            w[str(40 + k)] = sampler
            stage = str(50 + k)
            w[stage] = node("SamplerCustom", model=["4", 0], add_noise=k == 0, noise_seed=21 + k, cfg=6.5,
                            positive=["6", 0], negative=["7", 0], sampler=[str(40 + k), 0], sigmas=sigmas,
                            latent_image=latent)
            latent = [stage, 0]
        del w["3"]
        w["8"]["inputs"]["samples"] = latent
        out[name] = w

    # SamplerLCMUpscale (the latent grows 1.5x over the steps) and SamplerEulerCFG++'s
    # "alternative" Euler.
    out["custom_lcm_upscale"] = _custom(base, node(
        "SamplerLCMUpscale", scale_ratio=1.5, scale_steps=-1, upscale_method="bislerp"), _basic("normal", 4))
    out["custom_euler_cfg_pp_alternative"] = _custom(base, node("SamplerEulerCFGpp", version="alternative"),
                                                     _basic("karras", 8), cfg=2.0)

    # The sigma and noise extras: OptimalStepsScheduler's table, ExtendIntermediateSigmas, a first
    # sigma from SamplingPercentToSigma, and noise added up front by AddNoise (sampled without).
    w = base()
    w["30"] = node("OptimalStepsScheduler", model_type="Wan", steps=5, denoise=1.0)
    w["31"] = node("ExtendIntermediateSigmas", sigmas=["30", 0], steps=2, start_at_sigma=-1.0, end_at_sigma=0.5,
                   spacing="cosine")
    w["32"] = node("SamplingPercentToSigma", model=["4", 0], sampling_percent=0.3, return_actual_sigma=False)
    w["33"] = node("SetFirstSigma", sigmas=["31", 0], sigma=["32", 0])
    w["34"] = node("RandomNoise", noise_seed=9)
    w["35"] = node("AddNoise", model=["4", 0], noise=["34", 0], sigmas=["33", 0], latent_image=["5", 0])
    w["36"] = node("DisableNoise")
    w["37"] = node("CFGGuider", model=["4", 0], positive=["6", 0], negative=["7", 0], cfg=5.0)
    w["38"] = _select("euler")
    w["3"] = _advanced(["36", 0], ["37", 0], ["38", 0], ["33", 0], ["35", 0])
    out["custom_sigma_noise_extras"] = w
    return out


def is_stochastic_graph(case: dict[str, Any], stochastic_samplers: set[str] | frozenset[str]) -> bool:
    """Whether any sampler in the graph draws noise per step (the 30 dB bar applies)."""
    for n in case.values():
        if n["inputs"].get("sampler_name") in stochastic_samplers:
            return True
        if n["class_type"] in STOCHASTIC_SAMPLER_NODES:
            return True
    return False
