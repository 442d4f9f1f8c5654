"""Step previews: a sampler's current x0 estimate as a small JPEG, by latent -> RGB projection.

The cheap approximation ComfyUI calls "latent2rgb": each latent channel contributes a fixed RGB
vector, plus a bias. The sampler node wraps the latent in a `LatentPreview` carrying its model
family's factors; a bare latent gets SD1.x's (usable for SD2 too, as a rough preview). No VAE
decode, so a preview costs well under a millisecond per step at 64x64 latents.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

# Rows: latent channels 0..3; columns: R, G, B. (numpy is imported where used: the HTTP server
# imports this module and need not load numpy to answer API calls.)
SD1_LATENT_RGB = (
    (0.3512, 0.2297, 0.3227), (0.3250, 0.4974, 0.2350), (-0.2829, 0.1762, 0.2721), (-0.2120, -0.2616, -0.7177),
)
PREVIEW_METHODS = frozenset({"none", "auto", "latent2rgb"})
MAX_PREVIEW_SIDE = 512


@dataclass(frozen=True)
class LatentPreview:
    """A latent to preview and its latent format's latent2rgb projection."""

    latent: Any
    rgb_factors: tuple[tuple[float, float, float], ...]
    rgb_bias: tuple[float, float, float] | None = None


def _as_array(latent: Any, channels: int = len(SD1_LATENT_RGB)) -> Any:
    import numpy as np

    if hasattr(latent, "detach"):  # a torch tensor; no torch import needed here
        latent = latent.detach().float().cpu().numpy()
    array = np.asarray(latent, dtype=np.float32)
    if array.ndim == 4:
        array = array[0]  # first image of the batch
    if array.ndim != 3 or array.shape[0] != channels:
        raise ValueError(f"expected a [B,] {channels} x H x W latent, got shape {list(np.shape(latent))}")
    return array


def latent_preview_jpeg(latent: Any, quality: int = 85) -> bytes:
    """JPEG bytes of a latent's RGB approximation (8x smaller than the image it will decode to)."""
    import numpy as np
    from PIL import Image

    factors: Any = SD1_LATENT_RGB
    bias: Any = None
    if isinstance(latent, LatentPreview):
        latent, factors, bias = latent.latent, latent.rgb_factors, latent.rgb_bias
    array = _as_array(latent, len(factors))
    rgb = np.einsum("chw,cr->hwr", array, np.asarray(factors, dtype=np.float32))
    if bias is not None:
        rgb = rgb + np.asarray(bias, dtype=np.float32)
    pixels = (np.clip((rgb + 1.0) / 2.0, 0.0, 1.0) * 255.0).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    if max(image.size) > MAX_PREVIEW_SIDE:
        image.thumbnail((MAX_PREVIEW_SIDE, MAX_PREVIEW_SIDE))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
