"""Skip-layer guidance (ComfyUI's SkipLayerGuidanceDiT as SkipLayerGuidanceSD3 drives it): a
post-CFG patch that, while sigma lies in [sigma_end, sigma_start], runs the positive prompt again
with some transformer blocks skipped (each skipped block hands both streams on unchanged) and
adds (positive - skipped) * scale to the CFG result.

The network is asked to skip through a `skip_layers` keyword (comfyd's SD3 network passes it to
diffusers' transformer); this module knows nothing else of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from comfyd.sampling.cfg import POSITIVE, PromptBatcher
from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.guidance import CfgArgs, GuidanceEnv, PostFn


class _SkippingNetwork:
    """The sampler's network with `skip_layers` added to every call."""

    def __init__(self, network: Any, layers: tuple[int, ...]) -> None:
        self.network = network
        self.layers = list(layers)

    @property
    def config(self) -> Any:
        return getattr(self.network, "config", None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.network(*args, skip_layers=self.layers, **kwargs)


@dataclass(frozen=True, eq=False)
class SkipLayerGuidance:
    layers: tuple[int, ...]
    scale: float
    sigma_start: float
    sigma_end: float

    def bind(self, env: GuidanceEnv) -> PostFn:
        base = env.unet
        skipping = UNetDenoiser(
            _SkippingNetwork(base.unet, self.layers), base.schedule, base.prediction, base.dtype, base.device
        )
        positive = [entry for entry in env.entries if entry.kind == POSITIVE]
        batcher = PromptBatcher(skipping, positive, [True])

        def post(denoised: Tensor, args: CfgArgs) -> Tensor:
            sigma = float(args.sigma)
            if self.scale > 0 and self.sigma_end <= sigma <= self.sigma_start:
                (skipped,) = batcher.predictions(args.x, sigma)
                assert skipped is not None
                return denoised + (args.cond_denoised - skipped) * self.scale
            return denoised

        return post
