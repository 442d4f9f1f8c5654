"""SamplerCustom / SamplerCustomAdvanced: sample a LATENT with a GUIDER, a SAMPLER, SIGMAS and a
NOISE source (ComfyUI's `CFGGuider.sample` with a KSAMPLER), step for step as `ksampler` does it
for KSampler, except that the sigmas come in ready-made:

- an empty SIGMAS returns the input latent untouched;
- the initial noise is scaled by sigma0 (sqrt(1 + sigma0^2) from the top of the table) and added to
  the latent (scaled into the model's space unless it is all zeros);
- the result comes back with the last step's denoised estimate (`denoised_output`).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from comfyd.engine.errors import ExecutionInterrupted
from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.guidance import bind_model_guidance
from comfyd.sampling.guiders import Guider, NoiseSource, SamplerChoice
from comfyd.sampling.ksampler import (
    InpaintDenoiser,
    _check_latent,
    _Interruptible,
    as_model_latent,
    fix_empty_latent_channels,
    mask_function_of,
    prepare_denoise_mask,
    with_denoise_mask,
)
from comfyd.sampling.samplers import SamplerRun, final_sigma
from comfyd.sampling.samplers.base import Denoiser
from comfyd.sampling.step_batcher import DEFAULT_PRIORITY, lend_network

ProgressCallback = Callable[[int, int, Tensor], None]  # (step index, total steps, denoised preview)


def _as_sigmas(sigmas: Any) -> Tensor:
    if not isinstance(sigmas, Tensor) or sigmas.ndim != 1:
        raise ValueError("sigmas must be a SIGMAS value (a 1-D tensor)")
    if not torch.isfinite(sigmas).all():
        raise ValueError("sigmas must be finite")
    return sigmas.detach().to(device="cpu", dtype=torch.float32)


def sample_custom(
    guider: Guider,
    sampler: SamplerChoice,
    sigmas: Any,
    noise: NoiseSource,
    latent: dict[str, Any],
    callback: ProgressCallback | None = None,
    interrupt: threading.Event | None = None,
    priority: int = DEFAULT_PRIORITY,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(output, denoised_output) LATENTs."""
    if not isinstance(guider, Guider):
        raise ValueError("guider must be a GUIDER (CFGGuider, BasicGuider, DualCFGGuider)")
    if not isinstance(sampler, SamplerChoice):
        raise ValueError("sampler must be a SAMPLER (KSamplerSelect or a Sampler* node)")
    if not isinstance(noise, NoiseSource):
        raise ValueError("noise must be a NOISE (RandomNoise or DisableNoise)")
    latent = fix_empty_latent_channels(guider.model, latent)
    latent_image = as_model_latent(_check_latent(latent), guider.model, latent.get("noise_mask") is not None)
    sigmas = _as_sigmas(sigmas)
    sampler_fn = sampler.function()
    out = dict(latent)
    if len(sigmas) == 0:
        return out, out

    model = guider.model
    initial = noise.generate(latent).reshape(latent_image.shape)  # a one-frame latent: same values
    model_sampling = model.model_sampling
    schedule = model_sampling.schedule
    device = torch.device(model.device)
    x0 = latent_image.to(device=device, dtype=torch.float32)
    if torch.count_nonzero(latent_image) > 0:  # an empty latent is not scaled
        x0 = (x0 - model.latent_shift) * model.latent_scale
    initial = initial.to(device=device, dtype=torch.float32)
    noise_mask = latent.get("noise_mask")
    mask = prepare_denoise_mask(noise_mask, initial.shape).to(device) if noise_mask is not None else None
    entries = guider.entries(
        initial.shape, schedule, device, model.dtype, with_denoise_mask(model.vector_conditioning, mask),
        seed=noise.seed,
    )

    sigma0 = float(sigmas[0])
    max_denoise = math.isclose(schedule.sigma_max, sigma0, rel_tol=1e-05) or sigma0 > schedule.sigma_max
    x = model_sampling.noise_scaling(sigmas[0], initial, x0, max_denoise)

    total = max(len(sigmas) - 1, 1)
    last_denoised: list[Tensor] = []

    def on_step(step: int, _x: Tensor, denoised: Tensor) -> None:
        if interrupt is not None and interrupt.is_set():
            raise ExecutionInterrupted("sampling interrupted")
        last_denoised[:] = [denoised]
        if callback is not None:
            callback(step, total, denoised)

    with lend_network(model, priority, interrupt) as unet, torch.inference_mode():
        unet_denoiser = UNetDenoiser(unet, schedule, model_sampling.prediction, model.dtype, device)
        unet_denoiser.prepare(sigmas)
        guidance, keep_uncond = bind_model_guidance(model, unet_denoiser, initial.shape, schedule, device, entries)
        guided = guider.denoiser(
            unet_denoiser, entries, keep_uncond=keep_uncond or sampler.wants_uncond, guidance=guidance
        )
        denoiser: Denoiser = guided
        if mask is not None:
            inpaint_noise = initial
            if sampler.inpaint_noise_from_next_seed:
                generator = torch.Generator(device="cpu").manual_seed((noise.seed + 1) % 2**64)
                inpaint_noise = torch.randn(initial.shape, generator=generator, device="cpu").to(device)
            denoiser = InpaintDenoiser(
                denoiser, mask, x0, inpaint_noise, model_sampling, mask_function_of(model, schedule, sigmas)
            )
        if interrupt is not None:
            denoiser = _Interruptible(denoiser, interrupt)
        run = SamplerRun(
            seed=noise.seed, callback=on_step, last_uncond=lambda: guided.last_uncond, schedule=schedule,
            flow=model_sampling.is_flow,
        )
        samples = sampler_fn(denoiser, x, sigmas, run)
        samples = model_sampling.inverse_noise_scaling(final_sigma(sampler.name, sigmas), samples)
    out["samples"] = (samples.float() / model.latent_scale + model.latent_shift).cpu()
    if not last_denoised:
        return out, out
    denoised_out = dict(latent)
    denoised_out["samples"] = (last_denoised[0].float() / model.latent_scale + model.latent_shift).cpu()
    return out, denoised_out


def add_noise(model: Any, noise: Any, sigmas: Tensor, latent: dict[str, Any]) -> dict[str, Any]:
    """AddNoise: the latent noised to the span of `sigmas` (first minus last) as the model's
    sampling scales noise, back in the latent's own space; an empty latent is not shifted first."""
    if len(sigmas) == 0:
        return latent
    samples = latent["samples"]
    noisy = noise.generate(latent).float()
    scale = (sigmas[0] - sigmas[-1]).abs() if len(sigmas) > 1 else sigmas[0]
    x0 = samples.float()
    if torch.count_nonzero(x0) > 0:
        x0 = (x0 - model.latent_shift) * model.latent_scale
    out = model.model_sampling.noise_scaling(scale, noisy, x0, False)
    out = out / model.latent_scale + model.latent_shift
    return {**latent, "samples": torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)}
