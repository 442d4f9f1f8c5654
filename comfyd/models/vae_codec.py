"""Latent <-> pixel conversion with a diffusers AutoencoderKL, as ComfyUI's `comfy/sd.py:VAE` does it.

Conventions (ComfyUI's, see the reference §7):
- LATENT samples on links are unscaled; the sampler applies `latent_scale`, not the VAE.
- IMAGE is float32 NHWC in 0..1 on the CPU.
- Decoding: post_quant_conv -> decoder, then on the CPU in fp32 clamp((x + 1) / 2, 0, 1).
- Encoding: crop H and W down to multiples of the downscale factor (centred, offset (dim % f) // 2),
  x * 2 - 1, encoder -> quant_conv, and the posterior *mean*: no sampling, so encoding is
  deterministic (diffusers' img2img pipelines sample instead; ComfyUI does not).

The modules are called directly rather than through `AutoencoderKL.decode/encode` so a tiling or
slicing flag left on a shared module can never change the result.
"""

from __future__ import annotations

import os

import torch

from comfyd.models.handles import VaeHandle
from comfyd.models.interrupts import check_interrupt, install_hooks

# Working-memory estimates per sample for the SD VAE, in units of the tensor element size:
# decode needs about 2178 * (latent h * w * 64) elements, encode about 1767 * (pixel h * w)
# (ComfyUI's measured figures). Used only to choose how many samples go through at once.
_DECODE_ELEMENTS_PER_LATENT_PIXEL = 2178 * 64
_ENCODE_ELEMENTS_PER_PIXEL = 1767
# Share of the free memory one VAE call may plan to use.
_MEMORY_SHARE = 0.5


def _free_memory_bytes(device: torch.device) -> int:
    """Free memory on `device` (host RAM for the CPU); a conservative 4 GiB when unknown."""
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


def _chunk_size(per_sample_bytes: int, batch: int, device: torch.device) -> int:
    """How many samples fit in the memory budget at once (at least 1, at most the batch)."""
    budget = _free_memory_bytes(device) * _MEMORY_SHARE
    return max(1, min(batch, int(budget // max(per_sample_bytes, 1))))


def _as_device(device: object) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(str(device))


def crop_to_multiple(pixels: torch.Tensor, factor: int) -> torch.Tensor:
    """Crop NHWC pixels down to H, W multiples of `factor`, centred as ComfyUI does."""
    height, width = pixels.shape[1], pixels.shape[2]
    new_h = (height // factor) * factor
    new_w = (width // factor) * factor
    if new_h == height and new_w == width:
        return pixels
    if new_h == 0 or new_w == 0:
        raise ValueError(f"image of {width}x{height} is smaller than the VAE's {factor}x{factor} block")
    top = (height % factor) // 2
    left = (width % factor) // 2
    return pixels[:, top : top + new_h, left : left + new_w, :]


def _is_video_vae(module: object) -> bool:
    """Wan's VAE (`z_dim`) or a causal 3-D VAE with a time compression (HunyuanVideo's)."""
    config = getattr(module, "config", None)
    return getattr(config, "z_dim", None) is not None or hasattr(module, "temporal_compression_ratio")


def _video_decoder_call(module: torch.nn.Module, z: torch.Tensor) -> torch.Tensor:
    """Wan: diffusers' decode (its own frame-by-frame cache). Others: post_quant_conv and the
    decoder over the whole clip at once, as ComfyUI does (diffusers' decode() would switch to
    overlapping temporal tiles past 16 frames)."""
    if getattr(module.config, "z_dim", None) is not None:
        return module.decode(z, return_dict=False)[0]
    return module.decoder(module.post_quant_conv(z))


def _decode_video(vae: VaeHandle, samples: torch.Tensor) -> torch.Tensor:
    """Video latents [B, C, t, h, w] -> IMAGE [B * T, H, W, 3], T = 1 + 4 (t - 1) frames per
    sample, frames of one sample consecutive (ComfyUI's VAEDecode on a video VAE). The decoder
    is diffusers' causal one (frame by frame with its feature cache, output clamped to -1..1)."""
    device = _as_device(vae.device)
    frames: list[torch.Tensor] = []
    with vae.computing() as module, torch.inference_mode():
        for start in range(samples.shape[0]):
            check_interrupt()
            z = samples[start : start + 1].to(device=device, dtype=vae.dtype)
            decoded = _video_decoder_call(module, z).to("cpu").float()
            pixels = torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0)  # [1, 3, T, H, W]
            frames.append(pixels[0].movedim(0, -1))  # [T, H, W, 3]
    return torch.cat(frames, dim=0).contiguous()


def vae_decode(vae: VaeHandle, samples: torch.Tensor) -> torch.Tensor:
    """Unscaled latents [B, C, h, w] -> IMAGE float32 [B, h*f, w*f, 3] in 0..1 on the CPU
    (video latents [B, C, t, h, w]: all frames of every sample, see `_decode_video`)."""
    if isinstance(samples, torch.Tensor) and samples.ndim == 5 and samples.shape[1] == vae.latent_channels:
        if not _is_video_vae(vae.vae):
            raise ValueError("this latent is a video latent [B, C, T, H, W]; decode it with a video VAE")
        return _decode_video(vae, samples)
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        raise ValueError(f"VAE decode expects latents shaped [B, C, H, W], got {shape}")
    if samples.shape[1] != vae.latent_channels:
        raise ValueError(
            f"VAE decode expects {vae.latent_channels} latent channels, got {samples.shape[1]} "
            f"(is this latent from a different model family?)"
        )
    device = _as_device(vae.device)
    batch, _channels, height, width = samples.shape
    element_size = torch.tensor([], dtype=vae.dtype).element_size()
    per_sample = _DECODE_ELEMENTS_PER_LATENT_PIXEL * height * width * element_size
    images: list[torch.Tensor] = []
    with vae.computing() as module, torch.inference_mode():
        step = _chunk_size(per_sample, batch, device)  # free memory is read once the device is ours
        install_hooks(module.decoder)  # an interrupt takes effect between decoder blocks
        for start in range(0, batch, step):
            check_interrupt()
            z = samples[start : start + step].to(device=device, dtype=vae.dtype)
            if getattr(module, "post_quant_conv", None) is not None:
                z = module.post_quant_conv(z)
            decoded = module.decoder(z)
            # ComfyUI moves to the output device and to fp32 before mapping -1..1 to 0..1.
            decoded = decoded.to("cpu").float()
            images.append(torch.clamp((decoded + 1.0) / 2.0, min=0.0, max=1.0))
    return torch.cat(images, dim=0).movedim(1, -1).contiguous()


def _encode_video(vae: VaeHandle, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE [T, H, W, C] -> one video latent [1, C, 1 + (T - 1) // 4, H/8, W/8]: the frames are
    one clip, as ComfyUI's VAE.encode treats an image batch on a video VAE. diffusers' causal
    encoder (first frame, then groups of four, with its feature cache); the posterior mean."""
    device = _as_device(vae.device)
    pixels = crop_to_multiple(pixels[..., :3], vae.downscale)
    clip = pixels.movedim(-1, 0).unsqueeze(0)  # [1, 3, T, H, W]
    with vae.computing() as module, torch.inference_mode():
        check_interrupt()
        x = (clip.float() * 2.0 - 1.0).to(device=device, dtype=vae.dtype)
        if getattr(module.config, "z_dim", None) is not None:
            mean = module._encode(x)[:, : module.config.z_dim]
        else:  # the whole clip through the causal encoder at once, as ComfyUI does
            mean = module.quant_conv(module.encoder(x))[:, : module.config.latent_channels]
    return mean.to("cpu").float()


def vae_encode(vae: VaeHandle, pixels: torch.Tensor) -> torch.Tensor:
    """IMAGE [B, H, W, C] in 0..1 -> unscaled latents [B, C, H/f, W/f] (posterior mean), float32 CPU."""
    if not isinstance(pixels, torch.Tensor) or pixels.ndim != 4:
        shape = tuple(pixels.shape) if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"VAE encode expects images shaped [B, H, W, C], got {shape}")
    if pixels.shape[-1] < 3:
        raise ValueError(f"VAE encode expects at least 3 colour channels, got {pixels.shape[-1]}")
    if _is_video_vae(vae.vae):
        return _encode_video(vae, pixels)
    device = _as_device(vae.device)
    pixels = crop_to_multiple(pixels[..., :3], vae.downscale)
    nchw = pixels.movedim(-1, 1)
    batch, _channels, height, width = nchw.shape
    element_size = torch.tensor([], dtype=vae.dtype).element_size()
    per_sample = _ENCODE_ELEMENTS_PER_PIXEL * height * width * element_size
    latents: list[torch.Tensor] = []
    with vae.computing() as module, torch.inference_mode():
        step = _chunk_size(per_sample, batch, device)
        for start in range(0, batch, step):
            # -1..1 in fp32 on the host first, then to the VAE's device and dtype (ComfyUI's order).
            x = (nchw[start : start + step].float() * 2.0 - 1.0).to(device=device, dtype=vae.dtype)
            moments = module.encoder(x)
            if getattr(module, "quant_conv", None) is not None:
                moments = module.quant_conv(moments)
            mean, _logvar = torch.chunk(moments, 2, dim=1)
            latents.append(mean.to("cpu").float())
    return torch.cat(latents, dim=0)
