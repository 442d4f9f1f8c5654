"""Conditioning and classifier-free guidance, composed as ComfyUI composes them.

`prepare_conds` turns the CONDITIONING of both prompts into `CondEntry`s once per sampling run
(ComfyUI's `process_conds`): areas in percent resolved to latent cells, masks resized to the
latent, ConditioningSetTimestepRange percents turned into sigmas, SDXL's pooled output and size
conditioning built, every area of one prompt mirrored into the other, and the per-cell weights
(mask x strength, feathered area edges) precomputed on the device.

`CFGGuider(x, sigma)` then does ComfyUI's `sampling_function` each step: every active entry runs
through the UNet, entries that fit together as one batch (same input size, context lengths with
LCM / min <= 4) in ComfyUI's order (for one prompt each: [uncond, cond]); each prompt's
prediction is the weight-averaged sum of its entries; the result is
uncond + (cond - uncond) * cfg, and at cfg 1 the negative prompt is not run at all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from comfyd.sampling.cond_areas import mirror_area, repeat_to_batch, resolve_area_and_mask, weights
from comfyd.sampling.control import ControlRuns, share_with_uncond
from comfyd.sampling.denoiser import UNetDenoiser
from comfyd.sampling.protocols import ControlStep, VectorConditioning
from comfyd.sampling.sigmas import DiscreteSchedule
from comfyd.sampling.vector_conditioning import pooled_and_sizes

POSITIVE = 0
NEGATIVE = 1
_MAX_CONTEXT_REPEAT = 4  # contexts longer than 4x the shortest run as a separate batch
_FLOAT32_VECTORS = ("time_ids", "guidance", "frame_rate", "keyframe_idxs", "ref_ids")  # numbers, not features: kept exact


@dataclass(eq=False)
class CondEntry:
    """One conditioning of one prompt, ready to batch into the UNet."""

    kind: int  # index of the prompt it belongs to (POSITIVE or NEGATIVE for plain CFG)
    region: tuple[int, int]  # (h, w) of the latent cells this entry sees
    context: Tensor  # [B, tokens, dim] on the device, model dtype, repeated to the latent batch
    added: dict[str, Tensor] | None  # SDXL: text_embeds [B, 1280], time_ids [B, 6]
    area: tuple[int, int, int, int] | None  # (h, w, y, x) in latent cells, clipped to the latent
    mult: Tensor | None  # per-cell weights [B, C, h, w]; None = 1 everywhere
    sigma_start: float | None = None  # active only while sigma <= sigma_start ...
    sigma_end: float | None = None  # ... and sigma >= sigma_end
    control: ControlStep | None = None  # ControlNet / T2I-Adapter chain of this entry

    def active(self, sigma: float) -> bool:
        if self.sigma_start is not None and sigma > self.sigma_start:
            return False
        return not (self.sigma_end is not None and sigma < self.sigma_end)

    @property
    def tokens(self) -> int:
        return int(self.context.shape[1])


# --- preparation ---------------------------------------------------------------------------


def _conditioning_items(conditioning: Any, name: str) -> list[dict[str, Any]]:
    """CONDITIONING ([[tensor, dict], ...]) to plain dicts with the tensor under "cross_attn"."""
    if not isinstance(conditioning, (list, tuple)):
        raise ValueError(
            f"{name} conditioning must be a list of [tensor, dict] pairs, got {type(conditioning).__name__}"
        )
    items = []
    for i, pair in enumerate(conditioning):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2 or not isinstance(pair[1], dict):
            raise ValueError(f"{name} conditioning entry {i} is not a [tensor, dict] pair")
        tensor = pair[0]
        if not isinstance(tensor, Tensor) or tensor.ndim != 3:
            shape = list(tensor.shape) if isinstance(tensor, Tensor) else type(tensor).__name__
            raise ValueError(
                f"{name} conditioning entry {i}: expected a [batch, tokens, dim] tensor, got {shape}"
            )
        items.append({**pair[1], "cross_attn": tensor})
    return items


def prepare_conds(
    positive: Any,
    negative: Any,
    latent_shape: Sequence[int],
    schedule: DiscreteSchedule,
    device: Any,
    dtype: torch.dtype,
    sdxl: bool = False,
    vector_conditioning: VectorConditioning | None = None,
    seed: int | None = None,
) -> list[CondEntry]:
    """Both prompts' entries, positive first, each in its CONDITIONING order.

    `vector_conditioning` builds the UNet's vector input per entry (the model family's);
    `sdxl=True` is shorthand for SDXL's pooled-and-sizes builder. `seed` is the sampler's.
    """
    return prepare_prompts(
        [positive, negative], ["positive", "negative"], latent_shape, schedule, device, dtype, sdxl=sdxl,
        vector_conditioning=vector_conditioning, seed=seed,
    )


def prepare_prompts(
    conditionings: Sequence[Any],
    names: Sequence[str],
    latent_shape: Sequence[int],
    schedule: DiscreteSchedule,
    device: Any,
    dtype: torch.dtype,
    sdxl: bool = False,
    mirror_order: Sequence[int] | None = None,
    vector_conditioning: VectorConditioning | None = None,
    seed: int | None = None,
) -> list[CondEntry]:
    """The entries of any number of prompts; an entry's `kind` is its prompt's index.

    Areas are mirrored into every other prompt, visiting the prompts in `mirror_order` (ComfyUI
    visits them in the order the guider named them; by default the given order).
    `vector_conditioning` builds the UNet's vector input per entry (the model family's);
    `sdxl=True` is shorthand for SDXL's pooled-and-sizes builder. The builder sees the entry
    with the sampler's `seed` added, as ComfyUI's extra_conds see it (unCLIP draws noise from it).
    """
    if sdxl and vector_conditioning is None:
        vector_conditioning = pooled_and_sizes
    device = torch.device(device)
    video = len(latent_shape) == 5  # [B, C, T, H, W]: areas and masks would need a time axis
    latent_shape = (latent_shape[0], latent_shape[1], latent_shape[-2], latent_shape[-1])
    batch, _, height, width = latent_shape
    dims = (int(height), int(width))
    prompts = [_conditioning_items(c, name) for c, name in zip(conditionings, names, strict=True)]
    prompts = [[resolve_area_and_mask(item, dims, device) for item in items] for items in prompts]
    order = list(mirror_order) if mirror_order is not None else list(range(len(prompts)))
    for k in order:
        for item in prompts[k]:  # grows while other prompts mirror into it, as in ComfyUI
            for other in order:
                if other != k:
                    mirror_area(prompts[other], item)
    share_with_uncond(prompts, names)
    controls = ControlRuns(schedule.percent_to_sigma)

    entries = []
    for kind, items in enumerate(prompts):
        for item in items:
            added = None
            if vector_conditioning is not None:
                # time_ids stay float32: sizes above 2048 are not exact in fp16, and the UNet
                # embeds them in float32 anyway.
                added = {
                    key: repeat_to_batch(value, batch).to(
                        device=device, dtype=torch.float32 if key in _FLOAT32_VECTORS else dtype
                    )
                    for key, value in vector_conditioning(
                        item if seed is None else {**item, "seed": seed}, dims
                    ).items()
                }
            area, mult = weights(item, latent_shape, device)
            start = item.get("start_percent")
            end = item.get("end_percent")
            entries.append(
                CondEntry(
                    kind=kind,
                    region=(area[0], area[1]) if area is not None else dims,
                    context=repeat_to_batch(item["cross_attn"], batch).to(device=device, dtype=dtype),
                    added=added,
                    area=area,
                    mult=mult,
                    sigma_start=schedule.percent_to_sigma(float(start)) if start is not None else None,
                    sigma_end=schedule.percent_to_sigma(float(end)) if end is not None else None,
                    control=controls.step(item.get("control")),
                )
            )
    if video and any(e.area is not None or e.mult is not None for e in entries):
        raise ValueError("conditioning areas, masks and strengths on video latents are not supported yet")
    return entries


# --- guidance --------------------------------------------------------------------------------


def _can_batch(a: CondEntry, b: CondEntry, exact_context: bool = False) -> bool:
    if a.region != b.region or a.control is not b.control:
        return False
    ca, cb = a.context, b.context
    if ca.shape[0] != cb.shape[0] or ca.shape[2] != cb.shape[2]:
        return False
    if ca.shape[1] != cb.shape[1]:
        if exact_context:  # a network whose context is not repeated (ComfyUI's CONDRegular)
            return False
        shortest = min(ca.shape[1], cb.shape[1])
        if math.lcm(ca.shape[1], cb.shape[1]) // shortest > _MAX_CONTEXT_REPEAT:
            return False
    if (a.added is None) != (b.added is None):
        return False
    if a.added is not None and b.added is not None:
        if a.added.keys() != b.added.keys():
            return False
        if any(a.added[k].shape != b.added[k].shape for k in a.added):
            return False
    return True


@dataclass
class _Group:
    """Entries evaluated in one UNet call, with their inputs concatenated once."""

    entries: list[CondEntry]
    context: Tensor
    added: dict[str, Tensor] | None
    cropped: bool  # some entry sees only an area of the latent
    control: ControlStep | None = None  # shared by every entry of the group


@dataclass
class _Plan:
    groups: list[_Group]
    # Per prompt: (group, position) when the prediction is exactly one whole-latent chunk.
    direct: list[tuple[int, int] | None]


def _concat_contexts(contexts: list[Tensor]) -> Tensor:
    """Repeat each context along the token axis to the LCM length, then stack the batches."""
    if len(contexts) == 1:
        return contexts[0]
    length = contexts[0].shape[1]
    for c in contexts[1:]:
        length = math.lcm(length, c.shape[1])
    return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in contexts])


class PromptBatcher:
    """Runs the entries of several prompts through the UNet, batched as ComfyUI batches them, and
    averages each prompt's entries into its prediction (ComfyUI's calc_cond_batch)."""

    def __init__(self, unet: UNetDenoiser, entries: list[CondEntry], used: Sequence[bool]):
        self.unet = unet
        self.used = list(used)
        self.entries = [e for e in entries if self.used[e.kind]]
        self._plans: dict[tuple[int, ...], _Plan] = {}
        # Without timestep ranges every entry is active at every step: skip the per-step filter.
        self._ranged = any(e.sigma_start is not None or e.sigma_end is not None for e in self.entries)
        self._everything = tuple(range(len(self.entries)))
        # Joint-attention transformers (Qwen-Image) see repeated text tokens: contexts of
        # different lengths run as separate batches, as ComfyUI batches CONDRegular inputs.
        self._exact_context = bool(getattr(getattr(unet, "unet", None), "exact_context_batches", False))

    def _plan(self, active: tuple[int, ...]) -> _Plan:
        plan = self._plans.get(active)
        if plan is not None:
            return plan
        pending = list(active)
        groups: list[_Group] = []
        while pending:
            first = self.entries[pending[0]]
            fits = [
                k for k in range(len(pending))
                if _can_batch(self.entries[pending[k]], first, self._exact_context)
            ]  # fmt: skip
            members = [self.entries[pending.pop(k)] for k in reversed(fits)]
            added = None
            if members[0].added is not None:
                added = {key: torch.cat([m.added[key] for m in members]) for key in members[0].added}  # type: ignore[index]
            context = _concat_contexts([m.context for m in members])
            groups.append(
                _Group(members, context, added, any(m.area is not None for m in members), members[0].control)
            )
        direct: list[tuple[int, int] | None] = []
        for kind in range(len(self.used)):
            places = [
                (g, p)
                for g, group in enumerate(groups)
                for p, e in enumerate(group.entries)
                if e.kind == kind
            ]
            only = places[0] if len(places) == 1 else None
            if only is not None:
                entry = groups[only[0]].entries[only[1]]
                if entry.area is not None or entry.mult is not None:
                    only = None
            direct.append(only)
        plan = _Plan(groups, direct)
        self._plans[active] = plan
        return plan

    def predictions(self, x: Tensor, sigma: float) -> list[Tensor | None]:
        """One prediction per prompt, None for a prompt not used; a used prompt with no active
        entry predicts zeros (ComfyUI's 0 / 1e-37)."""
        if self._ranged:
            active = tuple(i for i, e in enumerate(self.entries) if e.active(sigma))
        else:
            active = self._everything
        plan = self._plan(active)
        chunks: list[list[Tensor]] = []
        for group in plan.groups:
            n = len(group.entries)
            inputs = [_crop(x, e.area) for e in group.entries] if group.cropped else [x] * n
            batch = inputs[0] if n == 1 else torch.cat(inputs)
            self.unet.batch_kinds = [e.kind for e in group.entries]  # read by attention captures
            prediction = self.unet(
                batch, sigma, group.context, group.added, control=group.control, batched_number=n
            )
            chunks.append(list(prediction.chunk(n)))

        results: list[Tensor | None] = []
        for kind, used in enumerate(self.used):
            if not used:
                results.append(None)
                continue
            place = plan.direct[kind]
            if place is not None:
                results.append(chunks[place[0]][place[1]])
                continue
            out = torch.zeros_like(x)
            counts = torch.full_like(x, 1e-37)
            for g, group in enumerate(plan.groups):
                for p, entry in enumerate(group.entries):
                    if entry.kind != kind:
                        continue
                    out_region, counts_region = _crop(out, entry.area), _crop(counts, entry.area)
                    if entry.mult is None:
                        out_region += chunks[g][p]
                        counts_region += 1.0
                    else:
                        out_region += chunks[g][p] * entry.mult
                        counts_region += entry.mult
            results.append(out.div_(counts))
        return results


class CFGGuider(PromptBatcher):
    """The guided denoiser D(x, sigma) the samplers call.

    `keep_uncond` runs the negative prompt even at cfg 1 (the CFG++ samplers read its prediction,
    `last_uncond`, after every call). `guidance` is the model's bound guidance patches
    (comfyd.sampling.guidance), which replace the plain combination.
    """

    def __init__(
        self, unet: UNetDenoiser, entries: list[CondEntry], cfg: float, keep_uncond: bool = False, guidance: Any = None
    ):
        self.cfg = float(cfg)
        self.guidance = guidance
        # cfg 1: uncond + (cond - uncond) * 1 is cond, so the negative prompt is never run.
        self.uses_uncond = keep_uncond or not math.isclose(self.cfg, 1.0)
        super().__init__(unet, entries, [True, self.uses_uncond])
        self.last_uncond: Tensor | None = None

    def __call__(self, x: Tensor, sigma: float) -> Tensor:
        cond, uncond = self.predictions(x, sigma)
        assert cond is not None
        if self.guidance is not None:
            cond, uncond = self.guidance.adjust(x, sigma, cond, uncond)
        if uncond is not None:
            self.last_uncond = uncond
        if self.guidance is not None:
            return self.guidance.combine(x, sigma, cond, uncond, self.cfg)
        if uncond is None:
            return cond
        return uncond + (cond - uncond) * self.cfg


def _crop(x: Tensor, area: tuple[int, int, int, int] | None) -> Tensor:
    if area is None:
        return x
    h, w, y, x0 = area
    return x[:, :, y : y + h, x0 : x0 + w]
