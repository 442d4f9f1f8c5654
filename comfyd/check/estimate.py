"""A rough estimate of a job's peak device memory and of its sampling work.

    weights      = sum of the model files' tensor bytes (from their headers), at the compute
                   dtype's width when that is narrower on the device (fp16/bf16: 2 bytes)
    latent       = batch x frames x channels x (H/8) x (W/8) x 4 bytes
    activations  = 2 (cond + uncond) x batch x frames x (H/8 x W/8) x 1280 x 2 bytes x 24
                   (a UNet/DiT block's widest feature map, and a factor for what a block keeps
                   alive at once; attention is taken as memory-efficient)
    peak         = weights + latent + activations
    work         = sum over samplers of steps x (H x W / 1e6) x batch x frames

It is an estimate meant to warn before queueing ("a 1024x1024 Flux job needs ~24 GiB, the card
has 16"), not a measurement; it ignores offloading and the VAE decode's own peak.
"""

from __future__ import annotations

from typing import Any

from comfyd.check.report import Estimate

LATENT_CREATORS_CHANNELS = {
    "EmptyLatentImage": 4,
    "EmptySD3LatentImage": 16,
    "EmptyHunyuanLatentVideo": 16,
    "EmptyMochiLatentVideo": 12,
    "EmptyLTXVLatentVideo": 128,
    "EmptyCosmosLatentVideo": 16,
    "Wan22ImageToVideoLatent": 48,
    "EmptyChromaRadianceLatentImage": 3,
}
SAMPLER_STEPS_INPUTS = {"KSampler": "steps", "KSamplerAdvanced": "steps", "BasicScheduler": "steps",
                        "LTXVScheduler": "steps"}
ACTIVATION_WIDTH = 1280
ACTIVATION_FACTOR = 24


def estimate(prompt: dict[str, Any], weight_bytes: int, compute_bytes_per_param: int | None,
             parameters: int, device_memory: int | None, complete: bool) -> Estimate:
    latents = _latents(prompt)
    batch_pixels = max((b * f * (w // 8) * (h // 8) for (w, h, b, f, _c) in latents), default=0)
    latent_bytes = sum(b * f * c * (w // 8) * (h // 8) * 4 for (w, h, b, f, c) in latents)
    activation_bytes = 2 * batch_pixels * ACTIVATION_WIDTH * 2 * ACTIVATION_FACTOR
    weights = weight_bytes
    if compute_bytes_per_param is not None and parameters:
        weights = min(weight_bytes, parameters * compute_bytes_per_param)
    peak = weights + latent_bytes + activation_bytes
    work = 0.0
    largest = max(latents, key=lambda x: x[0] * x[1] * x[2] * x[3], default=None)
    for node in prompt.values():
        name = SAMPLER_STEPS_INPUTS.get(node.get("class_type", ""))
        steps = node.get("inputs", {}).get(name) if name else None
        if isinstance(steps, int) and largest is not None:
            w, h, b, f, _c = largest
            denoise = node.get("inputs", {}).get("denoise", 1.0)
            scale = denoise if isinstance(denoise, int | float) and 0 < denoise <= 1 else 1.0
            work += steps * scale * (w * h / 1e6) * b * f
    notes = []
    if not latents:
        notes.append("no latent-creating node comfyd knows: activations and work not estimated")
    fits = None if device_memory is None or not complete else peak <= device_memory
    return Estimate(
        weight_bytes=weights,
        latent_bytes=latent_bytes,
        activation_bytes=activation_bytes,
        peak_device_bytes=peak,
        work_mpixel_steps=round(work, 3),
        device_memory_bytes=device_memory,
        fits=fits,
        complete=complete,
        notes=notes,
    )


def _latents(prompt: dict[str, Any]) -> list[tuple[int, int, int, int, int]]:
    found = []
    for node in prompt.values():
        channels = LATENT_CREATORS_CHANNELS.get(node.get("class_type", ""))
        if channels is None:
            continue
        inputs = node.get("inputs", {})
        width, height = inputs.get("width"), inputs.get("height")
        if not isinstance(width, int) or not isinstance(height, int):
            continue
        batch = inputs.get("batch_size", 1)
        length = inputs.get("length", 1)
        batch = batch if isinstance(batch, int) and batch > 0 else 1
        # Video latents hold about one frame in four (temporal compression).
        frames = max(1, (length - 1) // 4 + 1) if isinstance(length, int) and length > 1 else 1
        found.append((width, height, batch, frames, channels))
    return found
