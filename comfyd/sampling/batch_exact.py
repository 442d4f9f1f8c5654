"""Batch-invariant network calls on CPU: the ops whose per-row result depends on the batch size
are computed per job inside a batched call.

Measured on torch 2.13 CPU (oneDNN / MKL), with the rows of one job compared alone and inside a
larger batch (`bench/batching.py` checks the whole UNet):

- 2-D matrix products (`linear` on [rows, features]: the UNet's timestep embedding, the ResNet
  time projections, SDXL's added embedding) pick their kernel by the row count; with 1-3 rows
  (or, with 2 threads, 5-6 rows) it is a different kernel from the one for 4 or 8 rows, and it
  sums in another order: about 1e-7 apart, which the sampler then carries into every step.
- Convolutions of a single small image (batch 1, e.g. an 8x8 latent) take another path than the
  same image inside a batch of 2 or more; batches of 2..8 agree row for row.
- Token-wise linears ([rows, tokens, features]), convolutions of 2 or more images, attention
  (SDPA, bmm), group and layer norm agree row for row at every batch size tried.

So inside a batched call, every 2-D `linear` runs once per job on that job's own rows (the same
row count it has alone: the same kernel), and, when some job brings a single row, so does every
convolution. Everything else runs once over the whole batch. The split ops are small (the
embedding MLPs), except the convolutions in the single-row case.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_LINEAR = {F.linear, torch._C._nn.linear}
_CONV = {F.conv1d, F.conv2d, F.conv3d, torch.conv1d, torch.conv2d, torch.conv3d}


class PerJobOps(TorchFunctionMode):
    """While active (in one thread), batch-size-sensitive ops run per job segment.

    `sizes` are the row counts of the jobs, in the order their rows are concatenated.
    """

    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.sizes = [int(s) for s in sizes]
        self.total = sum(self.sizes)
        self.split_convs = any(s == 1 for s in self.sizes) and len(self.sizes) > 1

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if args and isinstance(args[0], torch.Tensor) and args[0].shape[:1] == (self.total,):
            x = args[0]
            if (func in _LINEAR and x.ndim == 2) or (self.split_convs and func in _CONV):
                # A fresh copy per job: the same row count and alignment as the job's own call.
                parts = [func(part.clone(), *args[1:], **kwargs) for part in x.split(self.sizes)]
                return torch.cat(parts)
        return func(*args, **kwargs)
