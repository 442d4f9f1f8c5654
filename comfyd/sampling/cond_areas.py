"""Where a conditioning entry acts on the latent: its area and mask resolved to latent cells, the
areas one prompt mirrors into the other, and the per-cell weights (mask x strength, feathered
area edges) that `cfg.prepare_conds` precomputes once per sampling run, as ComfyUI's
`process_conds` / `get_area_and_mult` do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

_AREA_FEATHER = 8  # cells faded in at the inner edges of an area without a mask


def repeat_to_batch(tensor: Tensor, batch: int) -> Tensor:
    """Cut or tile along dim 0 to exactly `batch` rows (ComfyUI's repeat_to_batch_size)."""
    n = tensor.shape[0]
    if n > batch:
        return tensor[:batch]
    if n < batch:
        reps = math.ceil(batch / n)
        return tensor.repeat(reps, *([1] * (tensor.ndim - 1)))[:batch]
    return tensor


def resolve_area_and_mask(
    item: dict[str, Any], dims: tuple[int, int], device: torch.device
) -> dict[str, Any]:
    """Percent areas to latent cells; masks resized to the latent (and optionally bounded by an area)."""
    item = dict(item)
    area = item.get("area")
    if area is not None and len(area) == 5 and area[0] == "percentage":
        h, w, y, x = area[1:]
        item["area"] = (
            max(1, round(h * dims[0])),
            max(1, round(w * dims[1])),
            round(y * dims[0]),
            round(x * dims[1]),
        )
    mask = item.get("mask")
    if mask is not None:
        mask = mask.to(device=device, dtype=torch.float32)
        if mask.ndim == 2:
            mask = mask.unsqueeze(0)
        if tuple(mask.shape[1:]) != dims:
            mask = F.interpolate(mask.unsqueeze(1), size=dims, mode="bilinear").squeeze(1)
        if item.get("set_area_to_bounds", False):
            item["area"] = mask_bounds(mask)
        item["mask"] = mask
    if item.get("area") is not None:
        item["area"] = tuple(int(v) for v in item["area"])
        if len(item["area"]) != 4:
            raise ValueError(f"conditioning area must be (height, width, y, x), got {item['area']}")
    return item


def mask_bounds(mask: Tensor) -> tuple[int, int, int, int]:
    """The smallest (h, w, y, x) box holding every nonzero cell of any mask (at least 8x8)."""
    bounds = mask.abs().amax(dim=0)
    ys, xs = torch.nonzero(bounds, as_tuple=True)
    if ys.numel() == 0:
        return (8, 8, 0, 0)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max())
    return (max(8, y1 - y0 + 1), max(8, x1 - x0 + 1), y0, x0)


def area_inside(inner: tuple[int, ...], outer: tuple[int, ...]) -> bool:
    return (
        inner[2] >= outer[2]
        and inner[3] >= outer[3]
        and inner[0] + inner[2] <= outer[0] + outer[2]
        and inner[1] + inner[3] <= outer[1] + outer[3]
    )


def mirror_area(others: list[dict[str, Any]], item: dict[str, Any]) -> None:
    """Give the other prompt an entry over `item`'s area, with the context that covers it there.

    The context comes from the smallest of the other prompt's areas holding this one (or its
    whole-image entry); nothing is added when that area is exactly this one.
    """
    area = item.get("area")
    if area is None:
        return
    smallest: dict[str, Any] | None = None
    for other in others:
        other_area = other.get("area")
        if other_area is not None:
            if not area_inside(area, other_area):
                continue
            if (
                smallest is None
                or smallest.get("area") is None
                or math.prod(smallest["area"][:2]) > math.prod(other_area[:2])
            ):
                smallest = other
        elif smallest is None:
            smallest = other
    if smallest is None or smallest.get("area") == area:
        return
    mirrored = dict(item)
    for key in (
        "cross_attn",
        "pooled_output",
        "width",
        "height",
        "crop_w",
        "crop_h",
        "target_width",
        "target_height",
    ):
        mirrored.pop(key, None)
        if key in smallest:
            mirrored[key] = smallest[key]
    others.append(mirrored)


def weights(item: dict[str, Any], latent_shape: Sequence[int], device: torch.device):
    """(clipped area, per-cell weights or None) as ComfyUI's get_area_and_mult computes them."""
    batch, channels, height, width = latent_shape
    dims = (height, width)
    area = item.get("area")
    if area is not None:
        h = min(height - area[2], area[0])
        w = min(width - area[3], area[1])
        if h <= 0 or w <= 0 or area[2] < 0 or area[3] < 0:
            raise ValueError(
                f"conditioning area {area} (h, w, y, x in latent cells) lies outside the {dims} latent"
            )
        area = (h, w, area[2], area[3])
    region = (area[0], area[1]) if area is not None else dims
    strength = float(item.get("strength", 1.0))
    mask = item.get("mask")
    if mask is None and area is None and strength == 1.0:
        return area, None
    if mask is not None:
        mask = mask[:batch]
        if area is not None:
            mask = mask[:, area[2] : area[2] + area[0], area[3] : area[3] + area[1]]
        mask = mask * float(item.get("mask_strength", 1.0))
        mult = repeat_to_batch(mask.unsqueeze(1), batch).repeat(1, channels, 1, 1)
    else:
        mult = torch.ones((batch, channels, *region), dtype=torch.float32, device=device)
    mult = mult * strength
    if mask is None and area is not None:
        for axis in range(2):
            size = mult.shape[2 + axis]
            ramp = min(_AREA_FEATHER, size // 4)
            if area[2 + axis] != 0:
                for t in range(ramp):
                    mult.narrow(axis + 2, t, 1).mul_((1.0 / ramp) * (t + 1))
            if area[axis] + area[2 + axis] < dims[axis]:
                for t in range(ramp):
                    mult.narrow(axis + 2, area[axis] - 1 - t, 1).mul_((1.0 / ramp) * (t + 1))
    return area, mult
