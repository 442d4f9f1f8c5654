"""KSampler / KSamplerAdvanced: from a LATENT and two CONDITIONINGs to the sampled LATENT.

ComfyUI's `nodes.common_ksampler` -> `comfy.sample.sample` -> `KSampler.sample` ->
`CFGGuider.sample` -> `KSAMPLER.sample`, step for step:

1. noise: CPU draw from the seed (per batch index if the latent has one), or zeros;
2. sigmas: the scheduler's, with the denoise tail and the penultimate-sigma drop, then
   KSamplerAdvanced's [start_step, last_step] window (last sigma forced to 0 unless the caller
   wants the leftover noise back);
3. a non-empty latent is moved into the model's space ((latent - latent_shift) x latent_scale), the start point is
   latent + noise * sigma0 (noise * sqrt(1 + sigma0^2) when starting from pure noise; flow
   models: sigma0 * noise + (1 - sigma0) * latent, and the result divided by 1 - last sigma);
4. the sampler runs on the guided denoiser (with a noise_mask: the kept region is reset to the
   original re-noised by the model sampling's `scale_inpaint` before (unnoised for LTX-Video and
   Wan 2.2, as ComfyUI's do) and to the original after every model call, and every conditioning entry's vector-conditioning builder sees the mask as `denoise_mask`,
   as ComfyUI's extra_conds do);
5. the result is scaled back (/ latent_scale + latent_shift) to float32 on the CPU.

The model is anything satisfying `protocols.SamplingModel` (the models package's ModelHandle is
one): sampling knows no model family.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfyd.engine.errors import ExecutionInterrupted
from comfyd.sampling.cfg import CFGGuider, prepare_conds
from comfyd.sampling.cond_areas import repeat_to_batch
from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.guidance import bind_model_guidance
from comfyd.sampling.noise import initial_noise
from comfyd.sampling.protocols import SamplingModel
from comfyd.sampling.samplers import (
    INPAINT_NOISE_FROM_NEXT_SEED,
    NEEDS_UNCOND,
    SamplerRun,
    final_sigma,
    get_sampler,
)
from comfyd.sampling.samplers.base import Denoiser
from comfyd.sampling.sigmas import SCHEDULER_NAMES, SCHEDULERS, ksampler_sigmas
from comfyd.sampling.step_batcher import DEFAULT_PRIORITY, lend_network

ProgressCallback = Callable[[int, int, Tensor], None]  # (step index, total steps, denoised preview)


class InpaintDenoiser:
    """Masked sampling (ComfyUI's KSamplerX0Inpaint): only where mask = 1 is denoised.

    Before each model call the kept region (mask = 0) is replaced by the original latent noised
    to the current sigma; the prediction there is replaced by the original latent.
    """

    def __init__(
        self,
        inner: Denoiser,
        mask: Tensor,
        latent: Tensor,
        noise: Tensor,
        model_sampling: Any = None,
        mask_function: Callable[[float, Tensor], Tensor] | None = None,
    ) -> None:
        self.inner = inner
        self.mask = mask
        self.keep = 1.0 - mask
        self.latent = latent
        self.kept_latent = latent * self.keep
        self.noise = noise
        self.model_sampling = model_sampling
        # A model's denoise-mask function (DifferentialDiffusion): the mask to use at each sigma.
        self.mask_function = mask_function

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        mask, keep, kept_latent = self.mask, self.keep, self.kept_latent
        if self.mask_function is not None:
            mask = self.mask_function(sigma, self.mask)
            keep = 1.0 - mask
            kept_latent = self.latent * keep
        if self.model_sampling is None:
            kept = self.noise * sigma + self.latent
        else:
            kept = self.model_sampling.scale_inpaint(sigma, self.noise, self.latent)
        x = x * mask + kept * keep
        return self.inner(x, sigma) * mask + kept_latent


def mask_function_of(model: Any, schedule: Any, sigmas: Tensor) -> Callable[[float, Tensor], Tensor] | None:
    """The model's denoise-mask function bound to this run's sigmas (None: the mask as given)."""
    patch = getattr(model, "denoise_mask_function", None)
    return patch.bind(schedule, sigmas) if patch is not None else None


class _Interruptible:
    def __init__(self, inner: Denoiser, interrupt: threading.Event) -> None:
        self.inner = inner
        self.interrupt = interrupt

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        if self.interrupt.is_set():
            raise ExecutionInterrupted("sampling interrupted")
        return self.inner(x, sigma)


def prepare_denoise_mask(noise_mask: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """A LATENT noise_mask ([B|1, 1, h, w] or [h, w]) resized bilinearly to the latent, all channels;
    for a video latent [B, C, T, H, W] a [B, 1, t, h, w] mask (or frames of [h, w]) trilinearly."""
    if len(shape) == 5:
        return _prepare_video_mask(noise_mask, shape)
    batch, channels, height, width = shape
    mask = noise_mask.float().reshape(-1, 1, noise_mask.shape[-2], noise_mask.shape[-1])
    mask = F.interpolate(mask, size=(height, width), mode="bilinear")
    if mask.shape[1] < channels:
        mask = mask.repeat(1, channels, *([1] * (mask.ndim - 2)))[:, :channels]
    return repeat_to_batch(mask, batch)


def _prepare_video_mask(noise_mask: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    batch, channels, frames, height, width = shape
    mask = noise_mask.float()
    if mask.ndim < 5:
        mask = mask.reshape(1, 1, -1, mask.shape[-2], mask.shape[-1])
    mask = F.interpolate(mask, size=(frames, height, width), mode="trilinear")
    if mask.shape[1] < channels:
        mask = mask.repeat(1, channels, 1, 1, 1)[:, :channels]
    return repeat_to_batch(mask, batch)


def with_denoise_mask(builder: Any, mask: Tensor | None) -> Any:
    """The model's vector-conditioning builder seeing the prepared noise mask as `denoise_mask`
    in every entry (ComfyUI hands it to every model's extra_conds); unchanged without a mask."""
    if builder is None or mask is None:
        return builder

    def build(item: dict[str, Any], dims: tuple[int, int]) -> Any:
        return builder(item if "denoise_mask" in item else {**item, "denoise_mask": mask}, dims)

    return build


def fix_empty_latent_channels(model: Any, latent: Any) -> Any:
    """An all-zero latent whose channel count is not the model's latent format's gets the model's
    (ComfyUI's fix_empty_latent_channels: EmptyHunyuanLatentVideo's 16 channels become the Wan
    2.2 5B's 48, EmptyLatentImage's 4 a Flux model's 16); anything else is left as it is."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    channels = getattr(getattr(model, "latent_format", None), "channels", None)
    if not isinstance(samples, Tensor) or samples.ndim < 2 or not isinstance(channels, int):
        return latent
    if samples.shape[1] == channels or torch.count_nonzero(samples) > 0:
        return latent
    return {**latent, "samples": samples.new_zeros((samples.shape[0], channels, *samples.shape[2:]))}


def _check_latent(latent: Any) -> Tensor:
    if not isinstance(latent, dict) or not isinstance(latent.get("samples"), Tensor):
        raise ValueError("latent_image must be a LATENT ({'samples': tensor [B, C, H, W], ...})")
    samples = latent["samples"]
    if samples.ndim not in (4, 5) or 0 in samples.shape:
        raise ValueError(
            "latent samples must be a non-empty [B, C, H, W] (or video [B, C, T, H, W]) tensor, "
            f"got shape {list(samples.shape)}"
        )
    mask = latent.get("noise_mask")
    if mask is not None and (not isinstance(mask, Tensor) or mask.ndim < 2):
        raise ValueError("latent noise_mask must be a tensor [..., H, W]")
    batch_index = latent.get("batch_index")
    if batch_index is not None and len(batch_index) != samples.shape[0]:
        raise ValueError(
            f"latent batch_index has {len(batch_index)} entries for a batch of {samples.shape[0]}"
        )
    return samples


def as_model_latent(samples: Tensor, model: Any, has_mask: bool = False) -> Tensor:
    """An image latent [B, C, H, W] for a model whose latent is 3-D (per-channel statistics over
    [B, C, T, H, W]: Qwen-Image on Wan's format) is sampled as one frame, as ComfyUI's
    fix_empty_latent_channels does; other latents are returned as they are."""
    scale = getattr(model, "latent_scale", None)
    if not (isinstance(scale, Tensor) and scale.ndim == 5 and samples.ndim == 4):
        return samples
    if has_mask:
        raise ValueError("noise masks on this model's one-frame latents are not supported yet")
    return samples.unsqueeze(2)


def _window(
    sigmas: Tensor, start_step: int | None, last_step: int | None, force_full_denoise: bool
) -> Tensor | None:
    """KSamplerAdvanced's step window; None when nothing is left to sample."""
    if last_step is not None and last_step < len(sigmas) - 1:
        sigmas = sigmas[: last_step + 1].clone()
        if force_full_denoise:
            sigmas[-1] = 0
    if start_step is not None:
        if start_step >= len(sigmas) - 1:
            return None
        sigmas = sigmas[start_step:]
    return sigmas


def common_ksampler(
    model: SamplingModel,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: Any,
    negative: Any,
    latent: dict[str, Any],
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
    callback: ProgressCallback | None = None,
    interrupt: threading.Event | None = None,
    priority: int = DEFAULT_PRIORITY,
) -> dict[str, Any]:
    """Sample `latent` with `model`; returns a copy of the LATENT dict with new samples."""
    sampler = get_sampler(sampler_name)
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULER_NAMES}")
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    latent = fix_empty_latent_channels(model, latent)
    latent_image = as_model_latent(_check_latent(latent), model, latent.get("noise_mask") is not None)

    if disable_noise:
        noise = torch.zeros(latent_image.shape, dtype=latent_image.dtype, device="cpu")
    else:
        noise = initial_noise(latent_image, seed, latent.get("batch_index"))

    model_sampling = model.model_sampling
    schedule = model_sampling.schedule
    sigmas = _window(
        ksampler_sigmas(schedule, scheduler, sampler_name, steps, denoise),
        start_step,
        last_step,
        force_full_denoise,
    )
    out = dict(latent)
    if sigmas is None or len(sigmas) == 0:
        return out  # nothing to sample: the input latent comes back as it is

    device = torch.device(model.device)
    x0 = latent_image.to(device=device, dtype=torch.float32)
    if torch.count_nonzero(latent_image) > 0:  # an empty latent is not scaled
        x0 = (x0 - model.latent_shift) * model.latent_scale
    noise = noise.to(device=device, dtype=torch.float32)
    noise_mask = latent.get("noise_mask")
    mask = prepare_denoise_mask(noise_mask, noise.shape).to(device) if noise_mask is not None else None
    entries = prepare_conds(
        positive, negative, noise.shape, schedule, device, model.dtype,
        vector_conditioning=with_denoise_mask(model.vector_conditioning, mask), seed=seed,
    )  # fmt: skip

    sigma0 = float(sigmas[0])
    max_denoise = math.isclose(schedule.sigma_max, sigma0, rel_tol=1e-05) or sigma0 > schedule.sigma_max
    x = model_sampling.noise_scaling(sigmas[0], noise, x0, max_denoise)

    total = len(sigmas) - 1

    def on_step(step: int, _x: Tensor, denoised: Tensor) -> None:
        if interrupt is not None and interrupt.is_set():
            raise ExecutionInterrupted("sampling interrupted")
        if callback is not None:
            callback(step, total, denoised)

    # LoRA patching happens outside inference mode: the patched weights are ordinary tensors.
    # Through the step batcher when it is on: concurrent jobs share each network call.
    with lend_network(model, priority, interrupt) as unet, torch.inference_mode():
        unet_denoiser = UNetDenoiser(unet, schedule, model_sampling.prediction, model.dtype, device)
        unet_denoiser.prepare(sigmas)
        guidance, keep_uncond = bind_model_guidance(model, unet_denoiser, noise.shape, schedule, device, entries)
        guider = CFGGuider(
            unet_denoiser, entries, cfg, keep_uncond=keep_uncond or sampler_name in NEEDS_UNCOND, guidance=guidance
        )
        denoiser: Denoiser = guider
        if mask is not None:
            inpaint_noise = noise
            if sampler_name in INPAINT_NOISE_FROM_NEXT_SEED:
                generator = torch.Generator(device="cpu").manual_seed((seed + 1) % 2**64)
                inpaint_noise = torch.randn(noise.shape, generator=generator, device="cpu").to(device)
            denoiser = InpaintDenoiser(
                denoiser, mask, x0, inpaint_noise, model_sampling, mask_function_of(model, schedule, sigmas)
            )
        if interrupt is not None:
            denoiser = _Interruptible(denoiser, interrupt)
        run = SamplerRun(
            seed=seed, callback=on_step, last_uncond=lambda: guider.last_uncond, schedule=schedule,
            flow=model_sampling.is_flow,
        )  # fmt: skip
        samples = sampler(denoiser, x, sigmas, run)
        samples = model_sampling.inverse_noise_scaling(final_sigma(sampler_name, sigmas), samples)
    # Outside inference mode, so downstream nodes get an ordinary tensor.
    out["samples"] = (samples.float() / model.latent_scale + model.latent_shift).cpu()
    return out
