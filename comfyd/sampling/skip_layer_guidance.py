"""Skip-layer guidance (ComfyUI's SkipLayerGuidanceDiT, which SkipLayerGuidanceSD3 also drives): a
post-CFG patch that, while sigma lies in [sigma_end, sigma_start], runs the positive prompt again
with some transformer blocks skipped (each skipped block hands its streams on unchanged), adds
(positive - skipped) * scale to the CFG result and optionally pulls the result's std towards the
positive prediction's (rescaling_scale).

SkipLayerGuidanceDiTSimple's patch (`SkipLayerUncond`) instead makes the negative prediction with
the blocks skipped, while sigma lies in the range and the negative prompt runs at all.

The network is asked to skip through `skip_layers` (double / joint blocks) and
`skip_single_layers` keywords (comfyd's SD3 and Flux networks take them); this module knows
nothing else of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from comfyd.sampling.cfg import NEGATIVE, POSITIVE, PromptBatcher
from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.guidance import CfgArgs, GuidanceEnv, PostFn, PredictionsFn


class _SkippingNetwork:
    """The sampler's network with the blocks to skip added to every call."""

    def __init__(self, network: Any, layers: tuple[int, ...], single_layers: tuple[int, ...] = ()) -> None:
        self.network = network
        self.skips: dict[str, list[int]] = {"skip_layers": list(layers)}
        if single_layers:
            self.skips["skip_single_layers"] = list(single_layers)

    @property
    def config(self) -> Any:
        return getattr(self.network, "config", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.network(*args, **self.skips, **kwargs)


def _skipping_batcher(
    env: GuidanceEnv, kind: int, layers: tuple[int, ...], single: tuple[int, ...]
) -> PromptBatcher:
    base = env.unet
    skipping = UNetDenoiser(
        _SkippingNetwork(base.unet, layers, single), base.schedule, base.prediction, base.dtype, base.device
    )
    entries = [entry for entry in env.entries if entry.kind == kind]
    return PromptBatcher(skipping, entries, [k == kind for k in range(kind + 1)])


@dataclass(frozen=True, eq=False)
class SkipLayerGuidance:
    layers: tuple[int, ...]
    scale: float
    sigma_start: float
    sigma_end: float
    single_layers: tuple[int, ...] = ()
    rescaling_scale: float = 0.0

    def bind(self, env: GuidanceEnv) -> PostFn:
        batcher = _skipping_batcher(env, POSITIVE, self.layers, self.single_layers)

        def post(denoised: Tensor, args: CfgArgs) -> Tensor:
            sigma = float(args.sigma)
            if self.scale > 0 and self.sigma_end <= sigma <= self.sigma_start:
                (skipped,) = batcher.predictions(args.x, sigma)
                assert skipped is not None
                result = denoised + (args.cond_denoised - skipped) * self.scale
                if self.rescaling_scale != 0:
                    factor = args.cond_denoised.std() / result.std()
                    result = result * (self.rescaling_scale * factor + (1 - self.rescaling_scale))
                return result
            return denoised

        return post


@dataclass(frozen=True, eq=False)
class SkipLayerUncond:
    """SkipLayerGuidanceDiTSimple: the negative prediction made with the blocks skipped. comfyd
    has already run the negative prompt batched with the positive one; in range it runs again."""

    layers: tuple[int, ...]
    sigma_start: float
    sigma_end: float
    single_layers: tuple[int, ...] = ()

    def bind(self, env: GuidanceEnv) -> PredictionsFn:
        batcher = _skipping_batcher(env, NEGATIVE, self.layers, self.single_layers)

        def predictions(
            x: Tensor, sigma: float, cond: Tensor, uncond: Tensor | None
        ) -> tuple[Tensor, Tensor | None]:
            if uncond is None or not self.sigma_end <= sigma <= self.sigma_start:
                return cond, uncond
            (_, skipped) = batcher.predictions(x, sigma)
            return cond, skipped

        return predictions
