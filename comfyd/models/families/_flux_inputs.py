"""What a Flux transformer reads from a conditioning entry besides the prompt: Fill's concat
channels and Kontext's reference latents (ComfyUI 0.3.64: model_base.Flux.concat_cond and
extra_conds, comfy/ldm/flux/model.py `_forward`).

Fill (and the Canny/Depth models): a transformer whose `img_in` takes more latent channels than
it puts out reads extra channels beside the noisy latent. The first 16 are the entry's
`concat_latent_image` (zeros without one), resized to the latent and normalised as a latent
going into the sampler; an inpainting transformer (more than twice the output channels) reads
next the `concat_mask` (else the sampler's noise mask, else ones), averaged over its channels, resized to 8x the
latent and folded into 64 channels, one per pixel of each 8x8 cell. They travel as the vector
conditioning `concat`; `FluxNetwork` appends them to the latent.

Kontext: each of the entry's `reference_latents` (normalised like the concat image) is packed
into 2x2 patches as the latent is and its tokens appended after the latent's, with position ids
laid out by `reference_latents_method`: `offset` (ComfyUI's default: first id 1, each further
reference placed below or right of the ones before, whichever keeps the layout squarer),
`index` (first id 1, 2, ... per reference, no offset) or `uxo` (first id 0, placed diagonally
past the latent and the references before). They travel as `ref_tokens` and `ref_ids`; the
network drops those tokens from its output.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from comfyd.sampling.vector_conditioning import pooled_and_guidance

PATCH = 2
MASK_CELL = 8  # the mask is folded from 8x8 pixel cells into channels
REFERENCE_METHODS = ("offset", "index", "uxo")


def _center_resize(samples: Tensor, height: int, width: int) -> Tensor:
    """ComfyUI's common_upscale(..., "bilinear", "center"): crop to the aspect, then resize."""
    h, w = samples.shape[-2:]
    if (h, w) == (height, width):
        return samples
    old, new = w / h, width / height
    x = round((w - w * (new / old)) / 2) if old > new else 0
    y = round((h - h * (old / new)) / 2) if old < new else 0
    samples = samples[..., y : h - y, x : w - x]
    return F.interpolate(samples, size=(height, width), mode="bilinear")


def _to_batch(tensor: Tensor, batch: int) -> Tensor:
    """ComfyUI's resize_to_batch_size: evenly spaced rows when shrinking, runs of repeats when
    growing."""
    n = tensor.shape[0]
    if n == batch:
        return tensor
    if batch <= 1:
        return tensor[:batch]
    if batch < n:
        scale = (n - 1) / (batch - 1)
        rows = [min(round(i * scale), n - 1) for i in range(batch)]
    else:
        rows = [min(math.floor((i + 0.5) * n / batch), n - 1) for i in range(batch)]
    return tensor[rows]


def concat_inputs(
    item: dict[str, Any], dims: tuple[int, int], latent_channels: int, inpaint: bool, process_in: Callable[[Tensor], Tensor]
) -> Tensor:
    """[B, 16 (+64), h, w]: the image (and mask) channels a Fill / control transformer reads."""
    height, width = dims
    image = item.get("concat_latent_image")
    # Without InpaintModelConditioning's mask ComfyUI reads the latent's noise mask.
    mask = item.get("concat_mask", item.get("denoise_mask"))
    batch = max((t.shape[0] for t in (image, mask) if isinstance(t, Tensor)), default=1)
    if image is None:
        image = torch.zeros((batch, latent_channels, height, width))
    elif not isinstance(image, Tensor) or image.ndim != 4:
        raise ValueError("a Flux Fill model needs concat_latent_image as an image latent [B, C, H, W]")
    image = process_in(_center_resize(image.float(), height, width))
    if not inpaint:
        return image
    if mask is None:
        mask = torch.ones((image.shape[0], 1, height, width))
    elif not isinstance(mask, Tensor):
        raise ValueError("concat_mask must be a mask tensor")
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    mask = _center_resize(mask.mean(dim=1, keepdim=True), height * MASK_CELL, width * MASK_CELL)
    b = mask.shape[0]
    mask = (
        mask.view(b, height, MASK_CELL, width, MASK_CELL)
        .permute(0, 2, 4, 1, 3)
        .reshape(b, MASK_CELL * MASK_CELL, height, width)
    )
    batch = max(image.shape[0], mask.shape[0])
    return torch.cat((_to_batch(image, batch), _to_batch(mask, batch)), dim=1)


def pack(latent: Tensor) -> tuple[Tensor, int, int]:
    """[B, C, H, W] -> ([B, rows * cols, C * 4], rows, cols): 2x2 patches, padded by wrapping."""
    batch, channels, height, width = latent.shape
    pad_h, pad_w = (-height) % PATCH, (-width) % PATCH
    if pad_h or pad_w:
        latent = F.pad(latent, (0, pad_w, 0, pad_h), mode="circular")
    rows, cols = latent.shape[2] // PATCH, latent.shape[3] // PATCH
    packed = (
        latent.reshape(batch, channels, rows, PATCH, cols, PATCH)
        .permute(0, 2, 4, 1, 3, 5)
        .reshape(batch, rows * cols, channels * PATCH * PATCH)
    )
    return packed, rows, cols


def unpack(tokens: Tensor, rows: int, cols: int) -> Tensor:
    """`pack`'s inverse: [B, rows * cols, C * 4] -> [B, C, rows * 2, cols * 2] (still padded)."""
    batch, channels = tokens.shape[0], tokens.shape[-1] // (PATCH * PATCH)
    return (
        tokens.reshape(batch, rows, cols, channels, PATCH, PATCH)
        .permute(0, 3, 1, 4, 2, 5)
        .reshape(batch, channels, rows * PATCH, cols * PATCH)
    )


def position_ids(rows: int, cols: int, index: int = 0, row_offset: int = 0, col_offset: int = 0) -> Tensor:
    """[rows * cols, 3] ids of a patch grid: (index, row + row_offset, column + col_offset)."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 0] = float(index)
    ids[..., 1] = torch.arange(row_offset, row_offset + rows, dtype=torch.float32)[:, None]
    ids[..., 2] = torch.arange(col_offset, col_offset + cols, dtype=torch.float32)[None, :]
    return ids.reshape(rows * cols, 3)


def _patches(pixels: int) -> int:
    """An offset in latent cells -> patches, rounded as ComfyUI rounds it."""
    return (pixels + PATCH // 2) // PATCH


def reference_layout(shapes: Sequence[tuple[int, int]], dims: tuple[int, int], method: str) -> list[tuple[int, int, int]]:
    """(index, row offset, column offset) in latent cells of each reference of (h, w) `shapes`
    beside a latent of `dims`."""
    if method not in REFERENCE_METHODS:
        raise ValueError(f"unknown reference_latents_method {method!r}; expected one of {list(REFERENCE_METHODS)}")
    rows, cols = _patches(dims[0]), _patches(dims[1])
    layout, h, w, index = [], 0, 0, 0
    for ref_h, ref_w in shapes:
        if method == "index":
            index += 1
            layout.append((index, 0, 0))
        elif method == "uxo":
            layout.append((0, rows * PATCH + h, cols * PATCH + w))
            h, w = h + ref_h, w + ref_w
        else:
            h_off = w_off = 0
            if ref_h + h > ref_w + w:
                w_off = w
            else:
                h_off = h
            layout.append((1, h_off, w_off))
            h, w = max(h, ref_h + h_off), max(w, ref_w + w_off)
    return layout


def reference_inputs(
    item: dict[str, Any], dims: tuple[int, int], process_in: Callable[[Tensor], Tensor]
) -> dict[str, Tensor]:
    """`ref_tokens` [B, N, C * 4] and `ref_ids` [B, N, 3] of an entry's reference latents."""
    refs = item.get("reference_latents")
    if not refs:
        return {}
    if not isinstance(refs, list | tuple) or not all(isinstance(r, Tensor) and r.ndim == 4 for r in refs):
        raise ValueError("reference_latents must be a list of image latents [B, C, H, W]")
    method = item.get("reference_latents_method") or "offset"
    layout = reference_layout([(int(r.shape[-2]), int(r.shape[-1])) for r in refs], dims, str(method))
    batch = max(r.shape[0] for r in refs)
    tokens, ids = [], []
    for ref, (index, h_off, w_off) in zip(refs, layout, strict=True):
        packed, rows, cols = pack(process_in(ref.float()))
        tokens.append(packed.repeat(-(-batch // packed.shape[0]), 1, 1)[:batch])
        ids.append(position_ids(rows, cols, index, _patches(h_off), _patches(w_off)))
    all_ids = torch.cat(ids)[None].expand(batch, -1, -1)
    return {"ref_tokens": torch.cat(tokens, dim=1), "ref_ids": all_ids}


def flux_builder(in_channels: int, out_channels: int, scale: float, shift: float) -> Any:
    """The vector-conditioning builder of a Flux transformer whose patches take `in_channels`
    and give `out_channels` (both per latent cell, i.e. the stored widths / 4)."""

    def process_in(latent: Tensor) -> Tensor:
        return (latent - shift) * scale

    def build(item: dict[str, Any], dims: tuple[int, int]) -> dict[str, Tensor]:
        if item.get("attention_mask") is not None:
            # ComfyUI's Flux reads it (StyleModelApply's attn_bias); refused rather than ignored.
            raise ValueError(
                "a Flux model cannot take a conditioning attention mask yet (StyleModelApply with "
                "strength_type attn_bias); use strength_type multiply"
            )
        out = pooled_and_guidance(item, dims)
        if in_channels > out_channels:
            concat = concat_inputs(item, dims, out_channels, in_channels > 2 * out_channels, process_in)
            area = item.get("area")
            if area is not None:  # an area entry sees its part of the concat, as ComfyUI crops it
                h, w, y, x = (int(v) for v in area[:4])
                concat = concat[:, :, y : y + h, x : x + w]
            out["concat"] = concat
        area = item.get("area")
        ref_dims = (int(area[0]), int(area[1])) if area is not None else dims
        out.update(reference_inputs(item, ref_dims, process_in))
        return out

    return build
