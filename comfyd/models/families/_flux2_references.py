"""Flux.2's reference images (ReferenceLatent: a conditioning entry's `reference_latents`), laid
out as diffusers' Flux2Pipeline lays out `image=[...]` (prepare_image_latents, _prepare_image_ids).

A reference is a Flux.2 latent as VAEEncode gives it: already 2x2-patchified and batch-normalised
by the VAE, so each latent cell is one token, unscaled. Its position ids are (t, row, column, 0)
with a time coordinate of 10 for the first reference, 20 for the second, and so on (the noisy
latent sits at t = 0). The references' tokens go after the latent's; the network drops them from
its output. They travel as the vector conditioning `ref_tokens` [B, N, C] and `ref_ids` [B, N, 4] (the
sampler stacks its inputs per row; every row's ids are the same).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

TIME_SCALE = 10  # diffusers' _prepare_image_ids(scale=10): reference i sits at t = 10 + 10 * i


def reference_ids(index: int, height: int, width: int) -> Tensor:
    """[height * width, 4] ids of reference `index` (0-based): (10 + 10 * index, row, column, 0)."""
    ids = torch.zeros(height, width, 4)
    ids[..., 0] = float(TIME_SCALE + TIME_SCALE * index)
    ids[..., 1] = torch.arange(height, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(width, dtype=torch.float32)[None, :]
    return ids.reshape(height * width, 4)


def reference_inputs(item: dict[str, Any], channels: int) -> dict[str, Tensor]:
    """`ref_tokens` and `ref_ids` of an entry's reference latents (empty without any)."""
    refs = item.get("reference_latents")
    if not refs:
        return {}
    if not isinstance(refs, list | tuple) or not all(isinstance(r, Tensor) and r.ndim == 4 for r in refs):
        raise ValueError("reference_latents must be a list of image latents [B, C, H, W]")
    for ref in refs:
        if ref.shape[1] != channels:
            raise ValueError(
                f"a Flux.2 reference latent needs {channels} channels, got {ref.shape[1]} "
                "(encode the reference image with a Flux.2 VAE)"
            )
    batch = max(r.shape[0] for r in refs)
    tokens, ids = [], []
    for index, ref in enumerate(refs):
        b, c, h, w = ref.shape
        packed = ref.float().reshape(b, c, h * w).permute(0, 2, 1)
        tokens.append(packed.repeat(-(-batch // b), 1, 1)[:batch])
        ids.append(reference_ids(index, h, w))
    return {"ref_tokens": torch.cat(tokens, dim=1), "ref_ids": torch.cat(ids)[None].expand(batch, -1, -1)}
