"""A tiny random-weight ESRGAN (RRDBNet) in the original ESRGAN key layout, for tests and parity.

`model.0` (first conv), `model.1.sub.<i>.RDB<j>.conv<k>.0` (the residual-in-residual dense
blocks), `model.1.sub.<n>` (trunk conv), then per 2x step an upsample and a conv, a high-res conv
and the last conv: the layout of the original ESRGAN releases, which spandrel (and so ComfyUI)
detects from the keys alone. Shapes come from spandrel's own RRDBNet; values come from a seeded
generator, scaled so that a picture goes through with its structure visible instead of saturating.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyd.models.upscale import _import_spandrel


def tiny_esrgan_state(scale: int = 2, num_filters: int = 16, num_blocks: int = 1,
                      seed: int = 0) -> dict[str, torch.Tensor]:
    _import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    shapes = {k: v.shape for k, v in ESRGAN(num_filters=num_filters, num_blocks=num_blocks,
                                             scale=scale).state_dict().items()}
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
