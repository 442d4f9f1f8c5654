"""ComfyUI's `comfy.utils`: progress bars, resizing and tensor files, as packs use them."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from comfyd.compat import state

PROGRESS_BAR_ENABLED = True
_global_hook: Callable[..., None] | None = None


def set_progress_bar_enabled(enabled: bool) -> None:
    global PROGRESS_BAR_ENABLED
    PROGRESS_BAR_ENABLED = enabled


def set_progress_bar_global_hook(hook: Callable[..., None] | None) -> None:
    global _global_hook
    _global_hook = hook


class ProgressBar:
    """Steps of the running node: each update is a `progress` event (and an interrupt point)."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        self.total = int(total)
        self.current = 0
        self._ctx = state.current_context()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        if total is not None:
            self.total = int(total)
        self.current = min(int(value), self.total) if self.total else int(value)
        if self._ctx is not None:
            self._ctx.progress(self.current, self.total)

    def update(self, value: int) -> None:
        self.update_absolute(self.current + int(value))


def common_upscale(
    samples: torch.Tensor, width: int, height: int, upscale_method: str, crop: str
) -> torch.Tensor:
    """Resize [B, C, H, W] (or [B, C, T, H, W]) samples as ComfyUI's helper does."""
    from comfyd.nodes.image.transform import common_upscale as image_upscale
    from comfyd.sampling.latent_resize import resize_latent

    if samples.ndim == 5:  # video latents: resize each frame
        b, c, t, h, w = samples.shape
        flat = samples.movedim(2, 1).reshape(b * t, c, h, w)
        out = common_upscale(flat, width, height, upscale_method, crop)
        return out.reshape(b, t, c, out.shape[-2], out.shape[-1]).movedim(1, 2)
    if upscale_method == "lanczos":
        return image_upscale(samples, width, height, upscale_method, crop)
    return resize_latent(samples, width, height, upscale_method, crop)


def lanczos(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    return common_upscale(samples, width, height, "lanczos", "disabled")


def bislerp(samples: torch.Tensor, width: int, height: int) -> torch.Tensor:
    from comfyd.sampling.latent_resize import bislerp as _bislerp

    return _bislerp(samples, width, height)


def get_tiled_scale_steps(width: int, height: int, tile_x: int, tile_y: int, overlap: int) -> int:
    rows = 1 if height <= tile_y else math.ceil((height - overlap) / (tile_y - overlap))
    cols = 1 if width <= tile_x else math.ceil((width - overlap) / (tile_x - overlap))
    return rows * cols


def load_torch_file(
    ckpt: str, safe_load: bool = False, device: Any = None, return_metadata: bool = False
) -> Any:
    """A weights file as a state dict. Safetensors always; pickle files only when the operator
    allows them (COMFYD_ALLOW_PICKLE), and then with `weights_only=True`."""
    path = Path(ckpt)
    device = torch.device("cpu") if device is None else device
    metadata: dict[str, str] | None = None
    if path.suffix.lower() in (".safetensors", ".sft"):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = dict(handle.metadata() or {})
            sd = {key: handle.get_tensor(key) for key in handle.keys()}
    else:
        if not state.settings().allow_pickle:
            raise RuntimeError(
                f"refusing to load {path.name}: pickle files can run code; convert it to .safetensors "
                "or set COMFYD_ALLOW_PICKLE=true (then it loads with weights_only=True)"
            )
        loaded = torch.load(str(path), map_location=device, weights_only=True)
        sd = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else loaded
    return (sd, metadata) if return_metadata else sd


def save_torch_file(sd: dict[str, torch.Tensor], ckpt: str, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    save_file(sd, ckpt, metadata=metadata)


def state_dict_prefix_replace(
    state_dict: dict[str, Any], replace_prefix: dict[str, str], filter_keys: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {} if filter_keys else state_dict
    for old, new in replace_prefix.items():
        for key in [k for k in state_dict if k.startswith(old)]:
            out[new + key[len(old) :]] = state_dict.pop(key)
    return out


def repeat_to_batch_size(tensor: torch.Tensor, batch_size: int, dim: int = 0) -> torch.Tensor:
    if tensor.shape[dim] > batch_size:
        return tensor.narrow(dim, 0, batch_size)
    if tensor.shape[dim] < batch_size:
        repeats = [1] * tensor.ndim
        repeats[dim] = math.ceil(batch_size / tensor.shape[dim])
        return tensor.repeat(repeats).narrow(dim, 0, batch_size)
    return tensor


def resize_to_batch_size(tensor: torch.Tensor, batch_size: int) -> torch.Tensor:
    return repeat_to_batch_size(tensor, batch_size)


def __getattr__(name: str) -> Any:
    # A name ComfyUI has and comfyd lacks: a placeholder that fails when used (aliases.missing).
    if name.startswith("__"):
        raise AttributeError(name)
    from comfyd.compat.aliases import missing

    return missing(f"comfy.utils.{name}")
