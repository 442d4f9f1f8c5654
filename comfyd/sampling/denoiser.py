"""The model call: D(x, sigma) from a diffusers UNet trained on the discrete schedule.

As ComfyUI's `BaseModel._apply_model` with EPS / V_PREDICTION model sampling:
x_in = x / sqrt(sigma^2 + 1), the UNet timestep is the nearest table index of sigma, and the
prediction becomes denoised = x - eps * sigma (EPS) or
x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1) (V); X0 models predict the denoised latent
itself (IMG_TO_IMG ones on an unscaled input), and LCM blends the EPS result with its input by
the consistency boundary conditions. The UNet runs in the model dtype; its output is cast back
to float32 before anything else touches it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from comfyd.sampling.model_sampling import PREDICTIONS
from comfyd.sampling.sigmas import DiscreteSchedule

_LCM_SIGMA_DATA = 0.5
_LCM_TIMESTEP_SCALING = 10.0


class UNetDenoiser:
    """Runs one batched UNet evaluation at one sigma. Holds per-sigma constants between steps."""

    def __init__(
        self, unet: Any, schedule: DiscreteSchedule, prediction: str, dtype: torch.dtype, device: Any
    ):
        if prediction not in PREDICTIONS:
            raise ValueError(f"model prediction must be one of {PREDICTIONS}, got {prediction!r}")
        self.unet = unet
        self.schedule = schedule
        self.prediction = prediction
        self.dtype = dtype
        self.device = torch.device(device)
        self._sigma_terms: dict[float, tuple[float, float, int]] = {}
        # Prompt kind of each chunk of the batch in the current call (set by the guider).
        self.batch_kinds: list[int] | None = None
        self._timestep_tensors: dict[tuple[int, int], Tensor] = {}

    def prepare(self, sigmas: Tensor) -> None:
        """Precompute the per-sigma constants of a whole schedule in three vector ops."""
        sigmas = sigmas.to(torch.float32)
        variances = sigmas**2 + 1.0
        c_ins = variances**0.5
        indices = self.schedule.timesteps(sigmas.clamp(min=torch.finfo(torch.float32).tiny))
        for sigma, c_in, variance, index in zip(
            sigmas.tolist(), c_ins.tolist(), variances.tolist(), indices.tolist(), strict=True
        ):
            self._sigma_terms.setdefault(sigma, (c_in, variance, index))

    def sigma_terms(self, sigma: float) -> tuple[float, float, int]:
        """(sqrt(sigma^2 + 1), sigma^2 + 1, UNet timestep), computed in float32 like ComfyUI."""
        terms = self._sigma_terms.get(sigma)
        if terms is None:
            s = torch.tensor(sigma, dtype=torch.float32)
            variance = s**2 + 1.0
            terms = (float(variance**0.5), float(variance), self.schedule.timestep(s))
            self._sigma_terms[sigma] = terms
        return terms

    def _timestep(self, index: int, batch: int) -> Tensor:
        # Built on the device with a fill, never copied from the host: no sync per step.
        key = (index, batch)
        t = self._timestep_tensors.get(key)
        if t is None:
            t = torch.full((batch,), float(index), dtype=torch.float32, device=self.device)
            self._timestep_tensors[key] = t
        return t

    def __call__(
        self, x: Tensor, sigma: float, context: Tensor, added_cond: dict[str, Tensor] | None
    ) -> Tensor:
        c_in, variance, index = self.sigma_terms(sigma)
        x_in = (x if self.prediction == "img_to_img" else x / c_in).to(self.dtype)
        out = self.unet(
            x_in,
            self._timestep(index, x.shape[0]),
            encoder_hidden_states=context,
            added_cond_kwargs=added_cond,
            return_dict=False,
        )[0].float()
        if self.prediction == "eps":
            return x - out * sigma
        if self.prediction == "v":
            return x / variance - (out * sigma) / c_in
        if self.prediction == "lcm":
            return _lcm_boundary(x, x - out * sigma, index)
        return out  # x0, img_to_img


def _lcm_boundary(x: Tensor, x0: Tensor, timestep: int) -> Tensor:
    """c_out * x0 + c_skip * x, with LCM's coefficients of the UNet timestep (float32, as ComfyUI)."""
    scaled = torch.tensor(timestep, dtype=torch.int64) * _LCM_TIMESTEP_SCALING
    c_skip = _LCM_SIGMA_DATA**2 / (scaled**2 + _LCM_SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + _LCM_SIGMA_DATA**2) ** 0.5
    return c_out.to(x.device) * x0 + c_skip.to(x.device) * x
