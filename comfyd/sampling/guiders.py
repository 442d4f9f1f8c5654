"""The GUIDER, SAMPLER and NOISE values of ComfyUI's custom-sampling nodes, and the guided
denoisers a guider becomes once the model is loaded.

- `Guider`: which prompts, how they combine (plain CFG, BasicGuider's positive-only, DualCFG's
  regular or nested blend), and the model they guide.
- `SamplerChoice`: a sampler name and the options a Sampler* node set.
- `NoiseSource`: RandomNoise's seed or DisableNoise (zeros, seed 0 for per-step noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from comfyd.sampling.cfg import CFGGuider, CondEntry, PromptBatcher, prepare_prompts
from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.noise import initial_noise
from comfyd.sampling.protocols import VectorConditioning
from comfyd.sampling.samplers import INPAINT_NOISE_FROM_NEXT_SEED, NEEDS_UNCOND, SamplerFn, get_sampler
from comfyd.sampling.sigmas import DiscreteSchedule

GUIDER_MODES = ("cfg", "basic", "dual_regular", "dual_nested")


@dataclass(frozen=True)
class SamplerChoice:
    """A SAMPLER: one of the KSampler names, with options (eta, s_noise, ...) for its function."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    # The sampler reads the negative prediction (CFG++), so the guider must always compute it.
    needs_uncond: bool = False

    def function(self) -> SamplerFn:
        fn = get_sampler(self.name)
        return partial(fn, **self.options) if self.options else fn

    @property
    def inpaint_noise_from_next_seed(self) -> bool:
        return self.name in INPAINT_NOISE_FROM_NEXT_SEED

    @property
    def wants_uncond(self) -> bool:
        return self.needs_uncond or self.name in NEEDS_UNCOND


@dataclass(frozen=True)
class NoiseSource:
    """A NOISE: the initial noise of a sampling run, and the seed its per-step noise uses."""

    seed: int
    enabled: bool = True

    def generate(self, latent: dict[str, Any]) -> Tensor:
        samples = latent["samples"]
        if not self.enabled:
            return torch.zeros(samples.shape, dtype=samples.dtype, layout=samples.layout, device="cpu")
        return initial_noise(samples, self.seed, latent.get("batch_index"))


@dataclass(frozen=True, eq=False)
class Guider:
    """A GUIDER: the model, its prompts and how their predictions combine."""

    model: Any
    mode: str
    prompts: tuple[Any, ...]  # CFG: (positive, negative); basic: (positive,); dual: (cond1, cond2, negative)
    cfg: float = 1.0
    cfg2: float = 1.0  # dual: cfg_cond2_negative

    def __post_init__(self) -> None:
        if self.mode not in GUIDER_MODES:
            raise ValueError(f"guider mode must be one of {GUIDER_MODES}, got {self.mode!r}")

    def entries(
        self,
        latent_shape: Sequence[int],
        schedule: DiscreteSchedule,
        device: Any,
        dtype: torch.dtype,
        vector_conditioning: VectorConditioning | None = None,
        seed: int | None = None,
    ) -> list[CondEntry]:
        if self.mode == "cfg":
            conds, names, mirror = list(self.prompts), ["positive", "negative"], None
        elif self.mode == "basic":
            conds, names, mirror = [self.prompts[0], []], ["positive", "negative"], None
        else:
            # Evaluated as ComfyUI's calc_cond_batch orders them: negative, middle, positive;
            # areas mirrored in the order the guider named them: positive, middle, negative.
            cond1, cond2, negative = self.prompts
            conds, names, mirror = [negative, cond2, cond1], ["negative", "cond2", "cond1"], [2, 1, 0]
        return prepare_prompts(
            conds, names, latent_shape, schedule, device, dtype, mirror_order=mirror,
            vector_conditioning=vector_conditioning, seed=seed,
        )

    def denoiser(
        self, unet: UNetDenoiser, entries: list[CondEntry], keep_uncond: bool, guidance: Any = None
    ) -> CFGGuider | DualCFG:
        """`guidance`: the model's bound guidance patches; BasicGuider ignores them, as ComfyUI's."""
        if self.mode == "cfg":
            return CFGGuider(unet, entries, self.cfg, keep_uncond=keep_uncond, guidance=guidance)
        if self.mode == "basic":
            return CFGGuider(unet, entries, 1.0, keep_uncond=keep_uncond)
        return DualCFG(
            unet, entries, self.cfg, self.cfg2, nested=self.mode == "dual_nested", keep_uncond=keep_uncond,
            guidance=guidance,
        )  # fmt: skip


class DualCFG(PromptBatcher):
    """DualCFGGuider: cond1 guided against cond2 (cfg_conds), cond2 against the negative
    (cfg_cond2_negative); "nested" applies the second scale to the first blend."""

    NEGATIVE, MIDDLE, POSITIVE = 0, 1, 2

    def __init__(
        self,
        unet: UNetDenoiser,
        entries: list[CondEntry],
        cfg1: float,
        cfg2: float,
        nested: bool,
        keep_uncond: bool,
        guidance: Any = None,
    ) -> None:
        self.cfg1, self.cfg2, self.nested = float(cfg1), float(cfg2), nested
        self.guidance = guidance
        used = [True, True, True]
        if not nested and not keep_uncond and math.isclose(self.cfg2, 1.0):
            used[self.NEGATIVE] = False
            used[self.MIDDLE] = not math.isclose(self.cfg1, 1.0)
        super().__init__(unet, entries, used)
        self.last_uncond: Tensor | None = None

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        predictions = self.predictions(x, sigma)
        negative, middle, positive = (p if p is not None else torch.zeros_like(x) for p in predictions)
        if self.nested:
            self.last_uncond = middle
            if self.guidance is not None:
                guided = self.guidance.combine(x, sigma, positive, middle, self.cfg1)
            else:
                guided = middle + (positive - middle) * self.cfg1
            return negative + self.cfg2 * (guided - negative)
        self.last_uncond = negative
        if self.guidance is not None:
            first = self.guidance.combine(x, sigma, middle, negative, self.cfg2)
        else:
            first = negative + (middle - negative) * self.cfg2
        return first + (positive - middle) * self.cfg1
