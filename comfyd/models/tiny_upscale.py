"""A tiny random-weight ESRGAN (RRDBNet) in the original ESRGAN key layout, for tests and parity.

`model.0` (first conv), `model.1.sub.<i>.RDB<j>.conv<k>.0` (the residual-in-residual dense
blocks), `model.1.sub.<n>` (trunk conv), then per 2x step an upsample and a conv, a high-res conv
and the last conv: the layout of the original ESRGAN releases, which spandrel (and so ComfyUI)
detects from the keys alone. Values come from a seeded generator, scaled so that a picture goes through with its structure visible instead of saturating.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

GROWTH = 32  # channels each dense-block conv adds (ESRGAN's gc)


def esrgan_shapes(scale: int = 2, num_filters: int = 16, num_blocks: int = 1) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of an RGB RRDBNet in the original ESRGAN layout."""
    if scale < 2 or scale & (scale - 1):
        raise ValueError(f"scale must be a power of two, not {scale}")
    nf = num_filters

    def conv(name: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (cout, cin, 3, 3), f"{name}.bias": (cout,)}

    shapes = conv("model.0", 3, nf)
    for b in range(num_blocks):
        for r in (1, 2, 3):
            for k in range(1, 6):
                shapes |= conv(f"model.1.sub.{b}.RDB{r}.conv{k}.0", nf + (k - 1) * GROWTH, nf if k == 5 else GROWTH)
    shapes |= conv(f"model.1.sub.{num_blocks}", nf, nf)
    steps = scale.bit_length() - 1  # one nearest 2x upsample + conv + leaky ReLU per step
    for i in range(steps):
        shapes |= conv(f"model.{3 * (i + 1)}", nf, nf)
    shapes |= conv(f"model.{3 * steps + 2}", nf, nf)  # high-resolution conv
    shapes |= conv(f"model.{3 * steps + 4}", nf, 3)  # last conv
    return shapes


def tiny_esrgan_state(scale: int = 2, num_filters: int = 16, num_blocks: int = 1,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    shapes = esrgan_shapes(scale, num_filters, num_blocks)
    generator = torch.Generator().manual_seed(seed)
    order = sorted(shapes, key=_layer_order)
    state: dict[str, torch.Tensor] = {}
    for name in order:
        shape = shapes[name]
        if name.endswith(".bias"):
            value = 0.01 * torch.randn(shape, generator=generator)
        else:  # He-style scaling for the leaky ReLUs: activations neither vanish nor explode
            value = torch.randn(shape, generator=generator) * math.sqrt(2.0 / math.prod(shape[1:]))
        state[name] = value.contiguous()
    # The last conv's bias centres the output at mid-grey, so little of it clips at 0 or 1.
    last_bias = [name for name in order if name.endswith(".bias")][-1]
    state[last_bias] = state[last_bias] + 0.5
    return state


def _layer_order(name: str) -> tuple[int, str]:
    return int(name.split(".")[1]), name


def write_tiny_esrgan(path: Path, scale: int = 2, num_filters: int = 16, num_blocks: int = 1,
                      seed: int = 0) -> Path:
    """Write the tiny ESRGAN to `path` (.safetensors), float32; the same seed gives the same bytes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tiny_esrgan_state(scale, num_filters, num_blocks, seed), str(path))
    return path
