"""The unCLIP image-embedding input (ADM) of SD2.1 unCLIP UNets, as ComfyUI builds it.

A conditioning entry carries `unclip_conditioning`: a list of `{clip_vision_output, strength,
noise_augmentation}` (unCLIPConditioning appends one). For every image embedding of every item,
the embedding is noised to a level (`round(999 * noise_augmentation)`) on the Karlo prior's
squared-cosine schedule, and the sinusoidal embedding of that level is appended; the pair is
multiplied by the item's strength. One embedding in all is used as it is; several are summed and
noised once more at a merge level (0.05 of the schedule). An entry without unCLIP items gives
zeros. The UNet adds the projection of this vector to its time embedding (`class_labels`).

The randomness is ComfyUI's: each embedding's noise is drawn with the CPU generator reseeded to
the sampler's seed minus 10; the merge noise is the next draw of that same generator. The data
statistics the augmentor normalises with are zero mean and unit std (ComfyUI never loads the
stored ones), so they are left out. Pure tensor math: nothing here knows a model file.
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import torch
from torch import Tensor

TIMESTEPS = 1000
MAX_BETA = 0.999
MERGE_AUGMENTATION = 0.05  # ComfyUI's unclip_noise_augment_merge default
SEED_OFFSET = 10


@cache
def _schedule() -> tuple[Tensor, Tensor]:
    """(sqrt(alpha_bar), sqrt(1 - alpha_bar)) per level, float64 math stored as float32."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = torch.tensor(
        [min(1 - alpha_bar((i + 1) / TIMESTEPS) / alpha_bar(i / TIMESTEPS), MAX_BETA) for i in range(TIMESTEPS)],
        dtype=torch.float64,
    )
    alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
    return (
        torch.sqrt(alphas_cumprod).to(torch.float32),
        torch.sqrt(1.0 - alphas_cumprod).to(torch.float32),
    )


def level_embedding(level: int, dim: int) -> Tensor:
    """The sinusoidal embedding [1, dim] of one noise level (cosines first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(0, half, dtype=torch.float32) / half)
    args = torch.tensor([level], dtype=torch.float32)[:, None] * freqs[None]
    out = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        out = torch.cat([out, torch.zeros_like(out[:, :1])], dim=-1)
    return out


def augment(embedding: Tensor, level: int, noise: Tensor) -> Tensor:
    """[embedding noised to `level`, embedding of `level`]: [1, 2 * dim]."""
    x = embedding.reshape(1, -1)
    keep, add = _schedule()
    noised = keep[level] * x + add[level] * noise
    return torch.cat((noised, level_embedding(level, x.shape[1])), dim=1)


def noise_level(augmentation: float) -> int:
    return round((TIMESTEPS - 1) * float(augmentation))


def _image_embeds(output: Any) -> Tensor:
    embeds = getattr(output, "image_embeds", None)
    if embeds is None and isinstance(output, dict):
        embeds = output.get("image_embeds")
    if not isinstance(embeds, Tensor):
        raise ValueError("unCLIP conditioning needs a CLIP_VISION_OUTPUT with image_embeds")
    return embeds


def unclip_vector(item: dict[str, Any], dims: tuple[int, int], width: int) -> dict[str, Tensor]:
    """The UNet's `class_labels` [1, width] for one conditioning entry (see the module docstring)."""
    del dims  # the unCLIP vector does not depend on the picture size
    items = item.get("unclip_conditioning") or []
    if not items:
        return {"class_labels": torch.zeros((1, width))}
    seed = int(item.get("seed", 0)) - SEED_OFFSET
    generator = torch.Generator(device="cpu")
    vectors: list[Tensor] = []
    for entry in items:
        strength = float(entry["strength"])
        level = noise_level(entry["noise_augmentation"])
        for embedding in _image_embeds(entry["clip_vision_output"]):
            if 2 * embedding.numel() != width:
                raise ValueError(
                    f"this unCLIP model takes {width // 2}-wide image embeddings; the CLIP vision output "
                    f"has {embedding.numel()} (use the CLIP vision model the checkpoint was trained with)"
                )
            generator.manual_seed(seed)
            noise = torch.randn((1, embedding.numel()), dtype=embedding.dtype, generator=generator)
            vectors.append(augment(embedding.cpu(), level, noise) * strength)
    if len(vectors) == 1:
        return {"class_labels": vectors[0]}
    summed = torch.stack(vectors).sum(0)
    half = summed.shape[1] // 2
    noise = torch.randn((1, half), dtype=summed.dtype, generator=generator)
    return {"class_labels": augment(summed[:, :half], noise_level(MERGE_AUGMENTATION), noise)}
