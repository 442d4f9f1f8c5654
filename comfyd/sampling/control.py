"""Control residuals inside the sampling loop: how they reach the UNet, and which prompts carry them.

A conditioning entry may carry a "control" value (a `protocols.ControlSignal`, built by the model
side). Once per run each distinct control starts a `ControlStep`; entries sharing a control share
its step, and only entries with the same control are batched together, as in ComfyUI. The step
answers `ControlResiduals` in ComfyUI's three lists, which `unet_kwargs` turns into the keyword
arguments a diffusers UNet takes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from comfyd.sampling.protocols import ControlSignal, ControlStep

# Prompts that hand their uncond-shared control to the others (ComfyUI's "positive"; the dual
# guider calls its first prompt cond1).
_SHARING_PROMPTS = ("positive", "cond1")


@dataclass
class ControlResiduals:
    """Residuals in ComfyUI's layout.

    `output`: one per UNet input block, in input-block order, added to that block's skip
    connection (ControlNet). `middle`: added after the middle block. `input`: popped from the end,
    one per input block, added to the hidden state right after that block (T2I-Adapter); None
    where nothing is added.
    """

    input: list[Tensor | None] = field(default_factory=list)
    middle: list[Tensor | None] = field(default_factory=list)
    output: list[Tensor | None] = field(default_factory=list)


def unet_kwargs(residuals: ControlResiduals | None, per_level: int, levels: int) -> dict[str, Any]:
    """The diffusers UNet2DConditionModel arguments that add `residuals` where ComfyUI adds them.

    diffusers adds an intrablock residual at the end of each level (before its downsampler), so
    T2I-Adapter residuals must land exactly there; anything else is refused. Residuals past the
    UNet's last input block are dropped, as ComfyUI never reaches them.
    """
    if residuals is None:
        return {}
    kwargs: dict[str, Any] = {}
    if any(r is not None for r in residuals.output) or any(r is not None for r in residuals.middle):
        if any(r is None for r in residuals.output) or len(residuals.middle) != 1 or residuals.middle[0] is None:
            raise ValueError("control residuals with gaps cannot be added to this UNet")
        kwargs["down_block_additional_residuals"] = tuple(residuals.output)
        kwargs["mid_block_additional_residual"] = residuals.middle[0]
    if any(r is not None for r in residuals.input):
        by_block = list(reversed(residuals.input))  # ComfyUI pops from the end: block 0 first
        level_ends = {level * (per_level + 1) + per_level: level for level in range(levels)}
        # Input blocks: the input conv, `per_level` blocks per level, a downsampler between levels.
        blocks = levels * (per_level + 1)
        intrablock: list[Tensor] = []
        for block, residual in enumerate(by_block):
            if residual is None or block >= blocks:
                continue  # ComfyUI pops one per input block: the rest (a 4-level adapter on a
                # shallower UNet) is never used
            if level_ends.get(block) != len(intrablock):
                raise ValueError(
                    f"a T2I-Adapter residual lands on UNet input block {block}, which this UNet's "
                    "layout cannot take (only the last block of each level)"
                )
            intrablock.append(residual)
        kwargs["down_intrablock_additional_residuals"] = intrablock
    return kwargs


def share_with_uncond(prompts: list[list[dict[str, Any]]], names: Sequence[str]) -> None:
    """ControlNetApply's control also drives the other prompts (ComfyUI's apply_empty_x_to_equal_area).

    Whole-image entries of the sharing prompt marked `control_apply_to_uncond` hand their
    controls, in order, to the other prompt's whole-image entries without a control (round
    robin); a prompt that already has a whole-image control entry is left alone.
    """
    sharing = next((i for i, name in enumerate(names) if name in _SHARING_PROMPTS), None)
    if sharing is None:
        return
    controls = [
        item["control"]
        for item in prompts[sharing]
        if item.get("control_apply_to_uncond", False) and item.get("area") is None
        and item.get("control") is not None
    ]
    if not controls:
        return
    for k, items in enumerate(prompts):
        if k == sharing:
            continue
        whole = [(i, item) for i, item in enumerate(items) if item.get("area") is None]
        if any(item.get("control") is not None for _, item in whole) or not whole:
            continue
        for n, control in enumerate(controls):
            index, item = whole[n % len(whole)]
            items[index] = {**item, "control": control}


class ControlRuns:
    """One `ControlStep` per distinct control of a run (entries sharing a control share it)."""

    def __init__(self, percent_to_sigma: Callable[[float], float]) -> None:
        self._percent_to_sigma = percent_to_sigma
        self._steps: dict[int, tuple[ControlSignal, ControlStep]] = {}

    def step(self, control: Any) -> ControlStep | None:
        if control is None:
            return None
        if not isinstance(control, ControlSignal):
            raise ValueError(f"conditioning 'control' must be a control model, got {type(control).__name__}")
        known = self._steps.get(id(control))
        if known is None:
            known = (control, control.for_run(self._percent_to_sigma))
            self._steps[id(control)] = known
        return known[1]
