"""The CONTROL_NET link value and the residuals it computes, as ComfyUI's comfy/controlnet.py does.

A `ControlLink` is a loaded control model plus what an apply node set on it: the hint image,
strength, start/end percent, the previous control of a chain, and extra arguments
(SetUnionControlNetType). Links are immutable; every node returns a new one, so a link cached
by one workflow never changes under another.

For a sampling run, `for_run` turns the percents into sigmas (`sampling.protocols.ControlSignal`)
and returns a `ControlRun`, which per UNet call:
- asks the previous control of the chain first;
- outside [end sigma, start sigma] answers only the previous control's residuals;
- resizes the hint to the latent size x 8 (nearest-exact, centre crop), once per size, and
  repeats it to the batch (ComfyUI's broadcast_image_to);
- runs the ControlNet on the UNet's own input, timestep and context (a union ControlNet with the
  control type SetUnionControlNetType set, see control_union), or the T2I-Adapter on the hint
  alone (once per size);
- scales every residual by the strength (after global average pooling for shuffle models) and
  adds the previous control's residuals.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor

from comfyd.models.control_detect import CONTROLNET
from comfyd.models.control_model import ControlModelHandle
from comfyd.models.control_union import check_control_type, union_controlnet_forward
from comfyd.sampling.control import ControlResiduals
from comfyd.sampling.latent_resize import resize_latent

COMPRESSION = 8
HINT_UPSCALE = "nearest-exact"


@dataclass(frozen=True, eq=False)
class ControlLink:
    """CONTROL_NET: compared by identity, as ComfyUI batches only entries sharing one control."""

    model: ControlModelHandle
    hint: Tensor | None = None  # [B, C, H, W] in 0..1 (IMAGE moved to channels-first)
    strength: float = 1.0
    percent_range: tuple[float, float] = (0.0, 1.0)
    previous: ControlLink | None = None
    extra_args: Mapping[str, Any] = field(default_factory=dict)
    vae: Any = None  # accepted like ComfyUI; SD ControlNets work on pixels and never use it

    def with_hint(
        self,
        image: Tensor,
        strength: float,
        percent_range: tuple[float, float],
        previous: ControlLink | None,
        vae: Any = None,
    ) -> ControlLink:
        if image.ndim != 4:
            raise ValueError(f"the control image must be a [batch, height, width, channels] IMAGE, got {list(image.shape)}")
        return replace(
            self,
            hint=image.movedim(-1, 1),
            strength=float(strength),
            percent_range=(float(percent_range[0]), float(percent_range[1])),
            previous=previous,
            vae=vae,
        )

    def with_extra_arg(self, name: str, value: Any) -> ControlLink:
        return replace(self, extra_args={**self.extra_args, name: value})

    def for_run(self, percent_to_sigma: Callable[[float], float]) -> ControlRun:
        if self.hint is None:
            raise ValueError("a ControlNet was used without a hint image (apply it with a ControlNetApply node)")
        previous = self.previous.for_run(percent_to_sigma) if self.previous is not None else None
        return ControlRun(
            self, percent_to_sigma(self.percent_range[0]), percent_to_sigma(self.percent_range[1]), previous
        )


def broadcast_hint(hint: Tensor, batch: int, batched_number: int) -> Tensor:
    """The hint repeated for a batch of `batched_number` prompts (ComfyUI's broadcast_image_to)."""
    if hint.shape[0] == 1:
        return hint
    per_prompt = batch // batched_number
    hint = hint[:per_prompt]
    if per_prompt > hint.shape[0]:
        whole, rest = divmod(per_prompt, hint.shape[0])
        hint = torch.cat([hint] * whole + [hint[:rest]], dim=0)
    if hint.shape[0] == batch:
        return hint
    return torch.cat([hint] * batched_number, dim=0)


class ControlRun:
    """A ControlLink during one sampling run (a `sampling.protocols.ControlStep`)."""

    def __init__(self, link: ControlLink, sigma_start: float, sigma_end: float, previous: ControlRun | None):
        self.link = link
        self.sigma_start = sigma_start
        self.sigma_end = sigma_end
        self.previous = previous
        self._hints: dict[tuple[int, int], Tensor] = {}
        self._adapter: dict[tuple[int, int], list[Tensor]] = {}

    def _hint(self, height: int, width: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        hint = self._hints.get((height, width))
        if hint is None:
            assert self.link.hint is not None
            source = self.link.hint.to(device=device, dtype=torch.float32)
            hint = resize_latent(source, width, height, HINT_UPSCALE, "center").to(dtype)
            self._hints[(height, width)] = hint
        return hint

    def __call__(
        self,
        x_in: Tensor,
        timestep: Tensor,
        sigma: float,
        context: Tensor,
        added: dict[str, Tensor] | None,
        batched_number: int,
    ) -> ControlResiduals | None:
        previous = None
        if self.previous is not None:
            previous = self.previous(x_in, timestep, sigma, context, added, batched_number)
        if sigma > self.sigma_start or sigma < self.sigma_end:
            return previous
        model = self.link.model
        if model.kind == CONTROLNET:
            current = self._controlnet(x_in, timestep, context, added, batched_number)
        else:
            current = self._t2i_adapter(x_in, batched_number)
        return self._merge(current, previous)

    def _controlnet(
        self, x_in: Tensor, timestep: Tensor, context: Tensor, added: dict[str, Tensor] | None, batched_number: int
    ) -> ControlResiduals:
        model = self.link.model
        height, width = x_in.shape[-2] * COMPRESSION, x_in.shape[-1] * COMPRESSION
        hint = broadcast_hint(self._hint(height, width, x_in.device, model.dtype), x_in.shape[0], batched_number)
        if hint.shape[1] != model.hint_channels:
            raise ValueError(
                f"{model.name} takes a {model.hint_channels}-channel hint image, got {hint.shape[1]} channels"
            )
        if model.union_types:
            control_type = list(self.link.extra_args.get("control_type", []))
            check_control_type(model.module, control_type, model.name)
            down, mid = union_controlnet_forward(
                model.module, x_in.to(model.dtype), timestep, context.to(model.dtype), hint, control_type, added
            )
            return ControlResiduals(middle=[mid], output=list(down))
        down, mid = model.module(
            x_in.to(model.dtype),
            timestep,
            encoder_hidden_states=context.to(model.dtype),
            controlnet_cond=hint,
            conditioning_scale=1.0,
            added_cond_kwargs=added,
            return_dict=False,
        )
        return ControlResiduals(middle=[mid], output=list(down))

    def _t2i_adapter(self, x_in: Tensor, batched_number: int) -> ControlResiduals:
        model = self.link.model
        # The latent x 8 is already a multiple of the SD adapters' pixel-unshuffle step (8).
        height, width = x_in.shape[-2] * COMPRESSION, x_in.shape[-1] * COMPRESSION
        features = self._adapter.get((height, width))
        if features is None:
            hint = self._hint(height, width, x_in.device, torch.float32)
            if model.hint_channels == 1 and hint.shape[1] > 1:
                hint = hint.mean(dim=1, keepdim=True)
            hint = broadcast_hint(hint, x_in.shape[0], batched_number)
            features = list(model.module(hint.to(model.dtype)))
            self._adapter[(height, width)] = features
        # One residual at the end of each of the four levels; ComfyUI lists them last block first.
        per_block: list[Tensor | None] = []
        for feature in features:
            per_block += [None, None, feature.clone()]
        return ControlResiduals(input=per_block[::-1])

    def _merge(self, current: ControlResiduals, previous: ControlResiduals | None) -> ControlResiduals:
        link = self.link
        out = ControlResiduals()
        for name in ("input", "middle", "output"):
            values = getattr(current, name)
            merged: list[Tensor | None] = getattr(out, name)
            for value in values:
                if value is not None:
                    if link.model.global_average_pooling:
                        value = value.mean(dim=(2, 3), keepdim=True).repeat(1, 1, value.shape[2], value.shape[3])
                    value = value * link.strength
                merged.append(value)
        if previous is not None:
            for name in ("input", "middle", "output"):
                merged = getattr(out, name)
                for i, before in enumerate(getattr(previous, name)):
                    if i >= len(merged):
                        merged.append(before)
                    elif before is not None:
                        merged[i] = before if merged[i] is None else before + merged[i]
        return out
