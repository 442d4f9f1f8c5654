"""The model call: D(x, sigma) from a diffusers UNet trained on the discrete schedule.

As ComfyUI's `BaseModel._apply_model` with EPS / V_PREDICTION model sampling:
x_in = x / sqrt(sigma^2 + 1), the UNet timestep is the nearest table index of sigma, and the
prediction becomes denoised = x - eps * sigma (EPS) or
x / (sigma^2 + 1) - v * sigma / sqrt(sigma^2 + 1) (V); X0 models predict the denoised latent
itself (IMG_TO_IMG ones on an unscaled input), and LCM blends the EPS result with its input by
the consistency boundary conditions. Flow models (CONST, `flow.py`) take x as it is at the
timestep their schedule gives (a float, not a table index) and denoise to x - v * sigma. The
UNet runs in the model dtype; its output is cast back to float32 before anything else touches it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from comfyd.sampling.control import unet_kwargs
from comfyd.sampling.model_sampling import PREDICTIONS as DISCRETE_PREDICTIONS
from comfyd.sampling.protocols import ControlStep
from comfyd.sampling.sigmas import DiscreteSchedule

PREDICTIONS = (*DISCRETE_PREDICTIONS, "const")
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
        self._sigma_terms: dict[float, tuple[float, float, float]] = {}
        # Prompt kind of each chunk of the batch in the current call (set by the guider).
        self.batch_kinds: list[int] | None = None
        self._timestep_tensors: dict[tuple[float, int], Tensor] = {}

    def prepare(self, sigmas: Tensor) -> None:
        """Precompute the per-sigma constants of a whole schedule in three vector ops."""
        sigmas = sigmas.to(torch.float32)
        variances = sigmas**2 + 1.0
        c_ins = variances**0.5 if self.prediction != "const" else torch.ones_like(sigmas)
        indices = self.schedule.timesteps(sigmas.clamp(min=torch.finfo(torch.float32).tiny))
        for sigma, c_in, variance, index in zip(
            sigmas.tolist(), c_ins.tolist(), variances.tolist(), indices.tolist(), strict=True
        ):
            self._sigma_terms.setdefault(sigma, (c_in, variance, index))

    def sigma_terms(self, sigma: float) -> tuple[float, float, float]:
        """(input divisor, sigma^2 + 1, network timestep), computed in float32 like ComfyUI; the
        divisor is sqrt(sigma^2 + 1), or 1 for a flow model."""
        terms = self._sigma_terms.get(sigma)
        if terms is None:
            s = torch.tensor(sigma, dtype=torch.float32)
            variance = s**2 + 1.0
            c_in = float(variance**0.5) if self.prediction != "const" else 1.0
            terms = (c_in, float(variance), self.schedule.timestep(s))
            self._sigma_terms[sigma] = terms
        return terms

    def _timestep(self, index: float, batch: int) -> Tensor:
        # Built on the device with a fill, never copied from the host: no sync per step.
        key = (index, batch)
        t = self._timestep_tensors.get(key)
        if t is None:
            t = torch.full((batch,), float(index), dtype=torch.float32, device=self.device)
            self._timestep_tensors[key] = t
        return t

    def _levels(self) -> tuple[int, int]:
        """(blocks per level, levels) of the UNet, where control residuals are placed."""
        config = getattr(self.unet, "config", None)
        if config is None:
            return (0, 0)
        per_level = config["layers_per_block"]
        if isinstance(per_level, list | tuple):
            per_level = per_level[0]
        return int(per_level), len(config["block_out_channels"])

    def __call__(
        self,
        x: Tensor,
        sigma: float,
        context: Tensor,
        added_cond: dict[str, Tensor] | None,
        control: ControlStep | None = None,
        batched_number: int = 1,
    ) -> Tensor:
        c_in, variance, index = self.sigma_terms(sigma)
        x_in = (x if self.prediction in ("const", "img_to_img") else x / c_in).to(self.dtype)
        timestep = self._timestep(index, x.shape[0])
        extra: dict[str, Any] = {}
        if added_cond is not None and "class_labels" in added_cond:
            # unCLIP's image-embedding vector is the UNet's class embedding input.
            added_cond = dict(added_cond)
            extra["class_labels"] = added_cond.pop("class_labels")
        if control is not None:
            residuals = control(x_in, timestep, sigma, context, added_cond, batched_number)
            extra.update(unet_kwargs(residuals, *self._levels()))
        out = self.unet(
            x_in,
            timestep,
            encoder_hidden_states=context,
            added_cond_kwargs=added_cond,
            return_dict=False,
            **extra,
        )[0].float()
        if self.prediction in ("eps", "const"):
            return x - out * sigma
        if self.prediction == "v":
            return x / variance - (out * sigma) / c_in
        if self.prediction == "lcm":
            return _lcm_boundary(x, x - out * sigma, int(index))
        return out  # x0, img_to_img


def _lcm_boundary(x: Tensor, x0: Tensor, timestep: int) -> Tensor:
    """c_out * x0 + c_skip * x, with LCM's coefficients of the UNet timestep (float32, as ComfyUI)."""
    scaled = torch.tensor(timestep, dtype=torch.int64) * _LCM_TIMESTEP_SCALING
    c_skip = _LCM_SIGMA_DATA**2 / (scaled**2 + _LCM_SIGMA_DATA**2)
    c_out = scaled / (scaled**2 + _LCM_SIGMA_DATA**2) ** 0.5
    return c_out.to(x.device) * x0 + c_skip.to(x.device) * x
