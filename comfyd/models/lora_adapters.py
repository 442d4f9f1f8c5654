"""What one LoRA-file entry does to one weight: the arithmetic of each format ComfyUI applies.

Every change works on an fp32 copy of the weight (the patcher casts back once at the end), in the
order and with the scalings ComfyUI 0.3.64 uses, so that the patched weights agree to rounding:

- `LowRank`: classic LoRA / LoCon, `up @ down` scaled by `alpha / rank`; with `lora_mid` (LoCon's
  Tucker core) the down projection is first folded through the core.
- `Hadamard`: LoHa, `(w1_a @ w1_b) * (w2_a @ w2_b)` (or the CP forms with `hada_t1`/`hada_t2`),
  scaled by `alpha / rank of w1_b`.
- `Kronecker`: LoKr, `kron(w1, w2)` where each factor is given whole or as an `_a @ _b` pair
  (`lokr_t2` for the CP form of w2); scaled by `alpha / rank` only when a factor is decomposed.
- Any of these with `dora_scale`: DoRA, the weight's direction changed then its norm rescaled.
- `Difference`: a full `.diff` / `.diff_b` / `.w_norm` / `.b_norm` tensor added at strength.
- `Replacement`: `.set_weight`, the weight replaced whatever the strength.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


def _f32(tensor: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return tensor.to(device=like.device, dtype=torch.float32)


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def _cp_product(core: torch.Tensor, b: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """The CP (Tucker) form LyCORIS stores for conv layers: core contracted with both factors."""
    return torch.einsum("i j k l, j r, i p -> p r k l", core, b, a)


def _shaped(diff: torch.Tensor, weight: torch.Tensor, what: str) -> torch.Tensor:
    if diff.numel() != weight.numel():
        raise ValueError(f"{what} change of shape {tuple(diff.shape)} does not fit a weight of {tuple(weight.shape)}")
    return diff.reshape(weight.shape)


def _add_scaled(weight: torch.Tensor, diff: torch.Tensor, alpha: float, strength: float,
                dora_scale: torch.Tensor | None) -> torch.Tensor:
    """weight + strength * alpha * diff, or DoRA's decomposition when there is a magnitude vector."""
    if dora_scale is None:
        weight += (strength * alpha) * diff
        return weight
    return _dora(weight, diff, alpha, strength, _dora_scale_like(_f32(dora_scale, weight), weight))


def _dora_scale_like(scale: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The magnitude vector with as many dimensions as the weight: a file written for the original
    layout's 1x1 conv (`[out, 1, 1, 1]`) also fits the same layer stored as a Linear."""
    if scale.dim() == weight.dim():
        return scale
    if scale.shape[0] == weight.shape[0]:
        return scale.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    return scale.reshape(1, -1, *[1] * (weight.dim() - 2))


def _dora(weight: torch.Tensor, diff: torch.Tensor, alpha: float, strength: float,
          scale: torch.Tensor) -> torch.Tensor:
    """DoRA as ComfyUI computes it: the LoRA changes the direction, `scale` sets each row's (or
    column's) norm. When the magnitude runs along the output axis the norm is taken of the base
    weight, otherwise of the changed one (ComfyUI's choice, kept for identical results)."""
    changed = weight + diff * alpha
    if scale.shape[0] == changed.shape[0]:
        norm = weight.reshape(weight.shape[0], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(weight.shape[0], *[1] * (weight.dim() - 1))
    else:
        columns = changed.transpose(0, 1)
        norm = columns.reshape(changed.shape[1], -1).norm(dim=1, keepdim=True)
        norm = norm.reshape(changed.shape[1], *[1] * (changed.dim() - 1)).transpose(0, 1)
    norm = norm + torch.finfo(weight.dtype).eps
    changed *= scale / norm
    if strength != 1.0:
        changed -= weight
        weight += strength * changed
        return weight
    return changed


@dataclass(frozen=True)
class LowRank:
    """LoRA / LoCon: `up [out, rank(,1,1)]`, `down [rank, in(, kh, kw)]`, optional Tucker `mid`."""

    up: torch.Tensor
    down: torch.Tensor
    alpha: float | None = None
    mid: torch.Tensor | None = None
    dora_scale: torch.Tensor | None = None

    kind = "lora"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def nbytes(self) -> int:
        return _nbytes(self.up, self.down, self.mid, self.dora_scale)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        up, down = _f32(self.up, weight), _f32(self.down, weight)
        alpha = self.alpha / self.rank if self.alpha is not None else 1.0
        if self.mid is not None:
            mid = _f32(self.mid, weight)
            # Fold the 1x1 down projection through the kh x kw core: [rank, in, kh, kw].
            shape = [down.shape[1], down.shape[0], mid.shape[2], mid.shape[3]]
            folded = torch.mm(down.transpose(0, 1).flatten(start_dim=1), mid.transpose(0, 1).flatten(start_dim=1))
            down = folded.reshape(shape).transpose(0, 1)
        diff = _shaped(torch.mm(up.flatten(start_dim=1), down.flatten(start_dim=1)), weight, "LoRA")
        return _add_scaled(weight, diff, alpha, strength, self.dora_scale)


@dataclass(frozen=True)
class Hadamard:
    """LoHa: the elementwise product of two low-rank products."""

    w1_a: torch.Tensor
    w1_b: torch.Tensor
    w2_a: torch.Tensor
    w2_b: torch.Tensor
    alpha: float | None = None
    t1: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    dora_scale: torch.Tensor | None = None

    kind = "loha"

    @property
    def nbytes(self) -> int:
        return _nbytes(self.w1_a, self.w1_b, self.w2_a, self.w2_b, self.t1, self.t2, self.dora_scale)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        alpha = self.alpha / self.w1_b.shape[0] if self.alpha is not None else 1.0
        w1_a, w1_b = _f32(self.w1_a, weight), _f32(self.w1_b, weight)
        w2_a, w2_b = _f32(self.w2_a, weight), _f32(self.w2_b, weight)
        if self.t1 is not None and self.t2 is not None:
            m1 = _cp_product(_f32(self.t1, weight), w1_b, w1_a)
            m2 = _cp_product(_f32(self.t2, weight), w2_b, w2_a)
        else:
            m1, m2 = torch.mm(w1_a, w1_b), torch.mm(w2_a, w2_b)
        diff = _shaped(m1 * m2, weight, "LoHa")
        return _add_scaled(weight, diff, alpha, strength, self.dora_scale)


@dataclass(frozen=True)
class Kronecker:
    """LoKr: `kron(w1, w2)`, each factor whole (`lokr_w1`) or a pair (`lokr_w1_a @ lokr_w1_b`)."""

    w1: torch.Tensor | None = None
    w1_a: torch.Tensor | None = None
    w1_b: torch.Tensor | None = None
    w2: torch.Tensor | None = None
    w2_a: torch.Tensor | None = None
    w2_b: torch.Tensor | None = None
    t2: torch.Tensor | None = None
    alpha: float | None = None
    dora_scale: torch.Tensor | None = None

    kind = "lokr"

    @property
    def complete(self) -> bool:
        first = self.w1 is not None or (self.w1_a is not None and self.w1_b is not None)
        second = self.w2 is not None or (self.w2_a is not None and self.w2_b is not None)
        return first and second

    @property
    def nbytes(self) -> int:
        return _nbytes(self.w1, self.w1_a, self.w1_b, self.w2, self.w2_a, self.w2_b, self.t2, self.dora_scale)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        rank = None
        if self.w1 is not None:
            w1 = _f32(self.w1, weight)
        else:
            assert self.w1_a is not None and self.w1_b is not None
            rank = self.w1_b.shape[0]
            w1 = torch.mm(_f32(self.w1_a, weight), _f32(self.w1_b, weight))
        if self.w2 is not None:
            w2 = _f32(self.w2, weight)
        else:
            assert self.w2_a is not None and self.w2_b is not None
            rank = self.w2_b.shape[0]
            if self.t2 is None:
                w2 = torch.mm(_f32(self.w2_a, weight), _f32(self.w2_b, weight))
            else:
                # Contiguous: torch.kron rejects the einsum's strided result (ComfyUI 0.3.64 on torch
                # 2.13 hits that error and leaves such a layer unpatched; see README, known limits).
                w2 = _cp_product(_f32(self.t2, weight), _f32(self.w2_b, weight), _f32(self.w2_a, weight))
                w2 = w2.contiguous()
        if w2.dim() == 4:
            w1 = w1.unsqueeze(2).unsqueeze(2)
        alpha = self.alpha / rank if self.alpha is not None and rank is not None else 1.0
        diff = _shaped(torch.kron(w1, w2), weight, "LoKr")
        return _add_scaled(weight, diff, alpha, strength, self.dora_scale)


@dataclass(frozen=True)
class Difference:
    """A full difference tensor added at strength (`.diff`, `.diff_b`, `.w_norm`, `.b_norm`)."""

    diff: torch.Tensor

    kind = "diff"

    @property
    def nbytes(self) -> int:
        return _nbytes(self.diff)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        if strength == 0.0:
            return weight
        if self.diff.numel() != weight.numel():
            # ComfyUI skips such a layer with a warning rather than failing the run.
            log.warning("difference of shape %s does not match weight %s; not applied",
                        tuple(self.diff.shape), tuple(weight.shape))
            return weight
        # A reshape only where the layouts store one layer differently (1x1 conv vs Linear).
        weight += strength * _f32(self.diff, weight).reshape(weight.shape)
        return weight


@dataclass(frozen=True)
class Replacement:
    """`.set_weight`: the weight becomes this tensor, at any strength."""

    value: torch.Tensor

    kind = "set"

    @property
    def nbytes(self) -> int:
        return _nbytes(self.value)

    def apply(self, weight: torch.Tensor, strength: float) -> torch.Tensor:
        weight.copy_(_f32(self.value, weight).reshape(weight.shape))
        return weight


Adapter = LowRank | Hadamard | Kronecker | Difference | Replacement
