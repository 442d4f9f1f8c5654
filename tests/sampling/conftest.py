"""Toy models for the sampling tests: a closed-form denoiser and a recording fake UNet."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor

from comfyd.models.handles import ModelHandle


@dataclass
class GaussianDenoiser:
    """The ideal denoiser when every latent element is independently N(mu, s^2).

    D(x, sigma) = mu + (x - mu) * s^2 / (s^2 + sigma^2). Its probability-flow ODE keeps
    (x - mu) / sqrt(s^2 + sigma^2) constant, so deterministic samplers have an exact target.
    """

    mu: float = 0.5
    s: float = 1.0
    calls: list[float] = field(default_factory=list)

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        self.calls.append(sigma)
        return self.mu + (x - self.mu) * (self.s**2 / (self.s**2 + sigma**2))

    def exact(self, x: Tensor, sigma_from: float, sigma_to: float = 0.0) -> Tensor:
        scale = math.sqrt(self.s**2 + sigma_to**2) / math.sqrt(self.s**2 + sigma_from**2)
        return self.mu + (x.double() - self.mu) * scale


@dataclass
class UNetCall:
    sample: Tensor
    timestep: Tensor
    context: Tensor
    added: dict[str, Tensor] | None


class FakeUNet:
    """Stands in for a diffusers UNet2DConditionModel: deterministic in every input, records calls."""

    def __init__(self) -> None:
        self.calls: list[UNetCall] = []

    def __call__(
        self,
        sample: Tensor,
        timestep: Tensor,
        encoder_hidden_states: Tensor,
        added_cond_kwargs: dict[str, Tensor] | None = None,
        return_dict: bool = True,
    ) -> tuple[Tensor]:
        self.calls.append(
            UNetCall(sample.clone(), timestep.clone(), encoder_hidden_states.clone(), added_cond_kwargs)
        )
        eps = 0.1 * sample + encoder_hidden_states.mean(dim=(1, 2))[:, None, None, None]
        eps = eps + 0.001 * timestep[:, None, None, None]
        return (eps,)


def fake_model(unet: Any = None, prediction: str = "eps", family: str = "sd1") -> ModelHandle:
    return ModelHandle(
        key="fake",
        family=family,
        prediction=prediction,
        unet=unet if unet is not None else FakeUNet(),
        latent_scale=0.18215,
        device=torch.device("cpu"),
        dtype=torch.float32,
    )


def cond(value: float, tokens: int = 77, dim: int = 8, batch: int = 1, **options: Any) -> list:
    """A CONDITIONING whose context is filled with `value` (so calls show which prompt ran)."""
    return [[torch.full((batch, tokens, dim), float(value)), {"pooled_output": None, **options}]]


@pytest.fixture
def gaussian() -> GaussianDenoiser:
    return GaussianDenoiser()


@pytest.fixture(name="cond")
def cond_fixture():
    return cond


@pytest.fixture(name="fake_model")
def fake_model_fixture():
    return fake_model


@pytest.fixture(name="make_fake_unet")
def make_fake_unet_fixture():
    return FakeUNet
