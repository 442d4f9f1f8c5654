"""Differential diffusion (ComfyUI's DifferentialDiffusion): a soft inpainting mask read as a
per-cell schedule. At each step the noise mask becomes binary: a cell is sampled once its mask
value reaches the run's progress threshold, which falls from 1 at the first sigma to 0 at the
last (measured in the model's timesteps). `strength` < 1 blends that binary mask with the soft one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

MaskFunction = Callable[[float, Tensor], Tensor]  # (current sigma, denoise mask) -> mask to use


@dataclass(frozen=True)
class DifferentialMask:
    strength: float = 1.0

    def bind(self, schedule: Any, sigmas: Tensor) -> MaskFunction:
        """The mask function of one sampling run over `sigmas` on `schedule`'s timesteps."""
        sigma_to = float(schedule.sigma_min)
        if float(sigmas[-1]) > sigma_to:
            sigma_to = float(sigmas[-1])
        ts_from = torch.as_tensor(schedule.timestep(sigmas[0]), dtype=torch.float32)
        ts_to = torch.as_tensor(schedule.timestep(torch.tensor(sigma_to, dtype=torch.float32)), dtype=torch.float32)
        strength = float(self.strength)

        def mask_at(sigma: float, mask: Tensor) -> Tensor:
            current = torch.as_tensor(schedule.timestep(torch.tensor(sigma, dtype=torch.float32)), dtype=torch.float32)
            threshold = (current - ts_to) / (ts_from - ts_to)
            binary = (mask >= threshold.to(mask.device)).to(mask.dtype)
            if strength and strength < 1:
                return strength * binary + (1 - strength) * mask
            return binary

        return mask_at
