"""Which device the models run on and in which dtypes.

Defaults follow ComfyUI (reference semantics §0):
- CUDA: UNet and text encoders in fp16 (bf16 when asked); the VAE in bf16 where the GPU supports
  it, else fp32 — never fp16, whose range overflows in the SDXL VAE (NaN images).
- CPU: everything computes in fp32; text-encoder weights are first rounded to fp16 and back,
  because ComfyUI keeps CLIP weights in fp16 on CPU and casts per op ("fp16 weights, fp32 math").
- `settings.device` ("auto", "cpu", "cuda", "cuda:1", "mps") and `settings.dtype` ("auto", "fp32",
  "fp16", "bf16") override; an explicit fp32 skips the fp16 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

_NAMED_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class ComputePlan:
    device: torch.device
    unet_dtype: torch.dtype
    clip_dtype: torch.dtype  # dtype the text encoders compute in
    clip_weight_rounding: torch.dtype | None  # weights rounded through this dtype first (or None)
    vae_dtype: torch.dtype
    gguf_on_the_fly: bool = True  # GGUF-quantized weights stay quantized (see gguf_layers)

    def describe(self) -> dict[str, str]:
        return {
            "device": str(self.device),
            "unet_dtype": _name(self.unet_dtype),
            "clip_dtype": _name(self.clip_dtype),
            "clip_weight_rounding": _name(self.clip_weight_rounding) if self.clip_weight_rounding else "none",
            "vae_dtype": _name(self.vae_dtype),
        }


def _name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _NAMED_DTYPES.items()}.get(dtype, str(dtype))


def choose_device(setting: str) -> torch.device:
    """The torch device for `settings.device`; "auto" picks CUDA, then MPS, then CPU."""
    text = (setting or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(text)
    except RuntimeError as exc:
        raise ValueError(
            f"settings.device {setting!r} is not a torch device (use auto, cpu, cuda, cuda:N, mps)"
        ) from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"settings.device is {setting!r} but CUDA is not available on this machine")
    return device


def _bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    return device.type == "cpu"


def settings_plan(settings: Any) -> ComputePlan:
    """The plan `settings` (device, dtype, gguf_dequantize_at_load) ask for."""
    at_load = bool(getattr(settings, "gguf_dequantize_at_load", False))
    return compute_plan(settings.device, settings.dtype, gguf_on_the_fly=not at_load)


def compute_plan(device_setting: str, dtype_setting: str, gguf_on_the_fly: bool = True) -> ComputePlan:
    return replace(_dtype_plan(device_setting, dtype_setting), gguf_on_the_fly=gguf_on_the_fly)


def _dtype_plan(device_setting: str, dtype_setting: str) -> ComputePlan:
    device = choose_device(device_setting)
    if dtype_setting not in ("auto", *_NAMED_DTYPES):
        raise ValueError(f"settings.dtype {dtype_setting!r} must be one of auto, fp32, fp16, bf16")
    # The VAE never runs in fp16; bf16 keeps fp32's range where the hardware has it.
    safe_vae = torch.bfloat16 if device.type == "cuda" and _bf16_supported(device) else torch.float32
    if dtype_setting == "auto":
        if device.type == "cpu":
            return ComputePlan(device, torch.float32, torch.float32, torch.float16, torch.float32)
        return ComputePlan(device, torch.float16, torch.float16, None, safe_vae)
    dtype = _NAMED_DTYPES[dtype_setting]
    if dtype == torch.float32:
        return ComputePlan(device, dtype, dtype, None, torch.float32)
    if dtype == torch.bfloat16:
        return ComputePlan(device, dtype, dtype, None, torch.bfloat16)
    return ComputePlan(device, dtype, dtype, None, safe_vae)
