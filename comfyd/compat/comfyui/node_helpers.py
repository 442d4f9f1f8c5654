"""ComfyUI's `node_helpers`: conditioning updates, Pillow retries, hashing."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image, ImageFile, UnidentifiedImageError


def conditioning_set_values(
    conditioning: list[Any], values: dict[str, Any] | None = None, append: bool = False
) -> list[Any]:
    """A new CONDITIONING list whose option dicts gain `values` (appended to lists with `append`)."""
    values = values or {}
    out = []
    for cond, options in conditioning:
        updated = dict(options)
        for key, value in values.items():
            if append and isinstance(updated.get(key), list):
                updated[key] = [*updated[key], *value]
            else:
                updated[key] = value
        out.append([cond, updated])
    return out


def pillow(fn: Callable[..., Any], arg: Any) -> Any:
    """Call a Pillow function, retrying once with truncated images allowed, as ComfyUI does."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        return fn(arg)
    except (OSError, UnidentifiedImageError, ValueError):
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        try:
            return fn(arg)
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def hasher() -> Callable[..., Any]:
    return hashlib.sha256


def string_to_torch_dtype(name: str) -> torch.dtype | None:
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}.get(name)


def image_alpha_fix(destination: torch.Tensor, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if destination.shape[-1] < source.shape[-1]:
        source = source[..., : destination.shape[-1]]
    elif destination.shape[-1] > source.shape[-1]:
        destination = destination[..., : source.shape[-1]]
    return destination, source


__all__ = ["Image", "conditioning_set_values", "hasher", "image_alpha_fix", "pillow", "string_to_torch_dtype"]


def __getattr__(name: str) -> Any:
    # A name ComfyUI has and comfyd lacks: a placeholder that fails when used (aliases.missing).
    if name.startswith("__"):
        raise AttributeError(name)
    from comfyd.compat.aliases import missing

    return missing(f"node_helpers.{name}")
