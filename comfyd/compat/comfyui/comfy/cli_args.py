"""ComfyUI's `comfy.cli_args`: its command-line flags, all at their defaults (comfyd has its own
settings). An unknown flag reads as None."""

from __future__ import annotations

from enum import Enum
from typing import Any


class LatentPreviewMethod(str, Enum):
    NoPreviews = "none"
    Auto = "auto"
    Latent2RGB = "latent2rgb"
    TAESD = "taesd"


class _Args:
    preview_method = LatentPreviewMethod.NoPreviews
    preview_size = 512
    disable_metadata = False
    cpu = False
    lowvram = False
    highvram = False
    novram = False
    force_fp16 = False
    force_fp32 = False
    fp16_vae = False
    bf16_vae = False
    fp32_vae = False
    disable_smart_memory = False
    deterministic = False
    listen = "127.0.0.1"
    port = 8188

    def __getattr__(self, name: str) -> Any:
        return None


args = _Args()
