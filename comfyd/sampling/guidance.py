"""Model patches that change how guidance combines predictions: ComfyUI's sampler CFG function
(one per model, the last patch wins) and post-CFG functions (all of them, in order).

A MODEL link carries a `Guidance` (frozen, pure data). Once sampling starts it is bound to the
run (`Guidance.bind`): the UNet and a way to prepare extra conditioning, for patches that run
the network again (PerpNeg's empty prompt). The guiders then call `BoundGuidance.combine`
where ComfyUI calls its `cfg_function`:

    cond, uncond = cond_batch(x, sigma, cond, uncond)  (a calc_cond_batch function, if any)
    cond, uncond = pre(x, sigma, cond, uncond) for each pre-CFG function
        (these two: `BoundGuidance.adjust`, plain CFG only, as ComfyUI's DualCFGGuider skips them)
    denoised = x - cfg_function(args)            (or uncond + (cond - uncond) * scale)
    denoised = post(denoised, args) for each post-CFG function

All arithmetic is float32 with sigma as a float32 tensor, in ComfyUI's order of operations.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from comfyd.sampling.cfg import CondEntry, PromptBatcher, prepare_prompts
from comfyd.sampling.denoiser import UNetDenoiser


@dataclass(frozen=True)
class CfgArgs:
    """What ComfyUI hands a CFG function: the input, sigma and both denoised predictions."""

    x: Tensor
    sigma: Tensor  # float32, 0-d, on x's device
    cond_denoised: Tensor
    uncond_denoised: Tensor
    cond_scale: float


@dataclass(frozen=True)
class GuidanceEnv:
    """What a patch may use during a sampling run."""

    unet: UNetDenoiser
    # CONDITIONING -> its entries for this run's latent, schedule, device and dtype.
    prepare: Callable[[Any], list[CondEntry]]
    # The guider's own entries (kind POSITIVE / NEGATIVE for plain CFG).
    entries: tuple[CondEntry, ...] = ()


CombineFn = Callable[[CfgArgs], Tensor]  # -> the denoised result
PostFn = Callable[[Tensor, CfgArgs], Tensor]  # (denoised so far, args) -> denoised
# (x, sigma, cond, uncond or None when the negative prompt did not run) -> (cond, uncond)
PredictionsFn = Callable[[Tensor, float, Tensor, "Tensor | None"], "tuple[Tensor, Tensor | None]"]


class CfgPatch(Protocol):
    def bind(self, env: GuidanceEnv) -> CombineFn: ...


class PostCfgPatch(Protocol):
    def bind(self, env: GuidanceEnv) -> PostFn: ...


class PredictionsPatch(Protocol):
    """A pre-CFG function, or the calc_cond_batch function: changes the predictions CFG combines."""

    def bind(self, env: GuidanceEnv) -> PredictionsFn: ...


@dataclass(frozen=True)
class Guidance:
    """The guidance patches of a model: at most one CFG function, any post-CFG functions."""

    cfg_function: CfgPatch | None = None
    post_cfg: tuple[PostCfgPatch, ...] = ()
    # Run the negative prompt even at cfg 1 (ComfyUI's disable_cfg1_optimization).
    disable_cfg1_optimization: bool = False

    # How the prompts' predictions are made (one per model, the last wins), and pre-CFG functions.
    cond_batch: PredictionsPatch | None = None
    pre_cfg: tuple[PredictionsPatch, ...] = ()

    @property
    def active(self) -> bool:
        return (
            self.cfg_function is not None
            or bool(self.post_cfg)
            or self.cond_batch is not None
            or bool(self.pre_cfg)
        )

    def with_cfg_function(self, patch: CfgPatch, disable_cfg1_optimization: bool = False) -> Guidance:
        return replace(
            self, cfg_function=patch,
            disable_cfg1_optimization=self.disable_cfg1_optimization or disable_cfg1_optimization,
        )  # fmt: skip

    def with_post_cfg(self, patch: PostCfgPatch, disable_cfg1_optimization: bool = False) -> Guidance:
        return replace(
            self, post_cfg=(*self.post_cfg, patch),
            disable_cfg1_optimization=self.disable_cfg1_optimization or disable_cfg1_optimization,
        )  # fmt: skip

    def with_pre_cfg(self, patch: PredictionsPatch) -> Guidance:
        return replace(self, pre_cfg=(*self.pre_cfg, patch))

    def with_cond_batch(self, patch: PredictionsPatch) -> Guidance:
        return replace(self, cond_batch=patch)

    def bind(self, env: GuidanceEnv) -> BoundGuidance:
        return BoundGuidance(
            self.cfg_function.bind(env) if self.cfg_function is not None else None,
            tuple(p.bind(env) for p in self.post_cfg),
            self.cond_batch.bind(env) if self.cond_batch is not None else None,
            tuple(p.bind(env) for p in self.pre_cfg),
        )


@dataclass(frozen=True)
class BoundGuidance:
    cfg_function: CombineFn | None = None
    post_cfg: tuple[PostFn, ...] = field(default_factory=tuple)
    cond_batch: PredictionsFn | None = None
    pre_cfg: tuple[PredictionsFn, ...] = field(default_factory=tuple)

    def adjust(
        self, x: Tensor, sigma: float, cond: Tensor, uncond: Tensor | None
    ) -> tuple[Tensor, Tensor | None]:
        """The calc_cond_batch function, then the pre-CFG functions, on a plain CFG run's predictions
        (ComfyUI's sampling_function; DualCFGGuider skips both, as there). What comes out is what
        CFG combines and what the post-CFG functions (and the CFG++ samplers) see as uncond."""
        if self.cond_batch is not None:
            cond, uncond = self.cond_batch(x, sigma, cond, uncond)
        for pre in self.pre_cfg:
            cond, uncond = pre(x, sigma, cond, uncond)
        return cond, uncond

    def combine(self, x: Tensor, sigma: float, cond: Tensor, uncond: Tensor | None, scale: float) -> Tensor:
        """ComfyUI's cfg_function; a prompt not run (cfg 1) predicts zeros, as there."""
        if uncond is None:
            uncond = torch.zeros_like(x)
        args = CfgArgs(x, torch.tensor(sigma, dtype=torch.float32, device=x.device), cond, uncond, scale)
        if self.cfg_function is not None:
            result = self.cfg_function(args)
        else:
            result = uncond + (cond - uncond) * scale
        for post in self.post_cfg:
            result = post(result, args)
        return result


def bind_model_guidance(
    model: Any, unet: UNetDenoiser, latent_shape: Any, schedule: Any, device: Any, entries: Any = ()
) -> tuple[BoundGuidance | None, bool]:
    """The model's guidance patches bound to this run (None when it has none), and whether they
    need the negative prompt run even at cfg 1."""
    guidance = getattr(model, "guidance", None)
    if guidance is None or not guidance.active:
        return None, False

    def prepare(conditioning: Any) -> list[CondEntry]:
        return prepare_prompts(
            [conditioning], ["empty_conditioning"], latent_shape, schedule, device, model.dtype,
            vector_conditioning=model.vector_conditioning,
        )  # fmt: skip

    env = GuidanceEnv(unet, prepare, tuple(entries))
    return guidance.bind(env), guidance.disable_cfg1_optimization


# --- the patches --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RescaleCfg:
    """RescaleCFG: CFG on the v-prediction view of the outputs, its std pulled back towards the
    positive prediction's by `multiplier`."""

    multiplier: float

    def bind(self, env: GuidanceEnv) -> CombineFn:
        return self._combine

    def _combine(self, args: CfgArgs) -> Tensor:
        x_orig, sigma, scale = args.x, args.sigma, args.cond_scale
        cond_noise = x_orig - args.cond_denoised
        uncond_noise = x_orig - args.uncond_denoised
        x = x_orig / (sigma * sigma + 1.0)
        cond = ((x - (x_orig - cond_noise)) * (sigma**2 + 1.0) ** 0.5) / sigma
        uncond = ((x - (x_orig - uncond_noise)) * (sigma**2 + 1.0) ** 0.5) / sigma
        x_cfg = uncond + scale * (cond - uncond)
        ro_pos = torch.std(cond, dim=(1, 2, 3), keepdim=True)
        ro_cfg = torch.std(x_cfg, dim=(1, 2, 3), keepdim=True)
        x_rescaled = x_cfg * (ro_pos / ro_cfg)
        x_final = self.multiplier * x_rescaled + (1.0 - self.multiplier) * x_cfg
        noise = x_orig - (x - x_final * sigma / (sigma * sigma + 1.0) ** 0.5)
        return x_orig - noise


@dataclass(frozen=True, eq=False)
class PerpNegCfg:
    """PerpNeg: the negative prediction's component perpendicular to the positive one, both taken
    relative to an empty prompt's prediction, which runs through the UNet every step."""

    empty_conditioning: Any  # CONDITIONING
    neg_scale: float

    def bind(self, env: GuidanceEnv) -> CombineFn:
        batcher = PromptBatcher(env.unet, env.prepare(self.empty_conditioning), [True])

        def combine_fn(args: CfgArgs) -> Tensor:
            (nocond,) = batcher.predictions(args.x, float(args.sigma))
            assert nocond is not None
            pos = args.cond_denoised - nocond
            neg = args.uncond_denoised - nocond
            perp = neg - (torch.mul(neg, pos).sum() / (torch.norm(pos) ** 2)) * pos
            result = nocond + args.cond_scale * (pos - perp * self.neg_scale)
            # ComfyUI returns x - (x - result); kept for the same rounding.
            return args.x - (args.x - result)

        return combine_fn
