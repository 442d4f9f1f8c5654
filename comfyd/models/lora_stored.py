"""LoRA changes on weights that the stored layout holds differently from the running module.

Flux files (and the LoRAs trained on them) name BFL's fused weights: `double_blocks.N.img_attn.qkv`
is diffusers' to_q, to_k and to_v stacked row-wise, `single_blocks.N.linear1` is to_q, to_k, to_v
and proj_mlp, and `final_layer.adaLN_modulation.1` holds diffusers' norm_out rows with its two
halves swapped. ComfyUI patches the stored weight, so a LoRA on a fused weight changes the
stored tensor as a whole (a DoRA norm, a LoKr product see all its rows), and a diffusers-named
LoRA changes its rows of it. Here each such stored weight is a group: its pieces are gathered
into the stored layout in fp32, every change of every patch is applied there in patch order,
and the rows are written back to the module's parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn

from comfyd.models.gguf_layers import quantized_weights
from comfyd.models.keymap import ROWS, SWAP_HALVES, Translator

STORED = "@"  # index targets and op keys naming a stored-layout weight start with this

WeightOp = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Piece:
    param: str  # the module's parameter
    start: int  # its rows in the stored tensor
    stop: int
    swap: bool  # stored with its two halves exchanged


def _swap(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


@dataclass
class StoredLayout:
    groups: dict[str, list[Piece]] = field(default_factory=dict)  # "@stored key" -> pieces by row
    owner: dict[str, tuple[str, Piece]] = field(default_factory=dict)  # parameter -> its group

    def gather(self, parameters: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
        """The stored-layout fp32 tensor of group `key`, from the current parameters."""
        parts = []
        for piece in self.groups[key]:
            part = parameters[piece.param].detach().to(torch.float32, copy=True)
            parts.append(_swap(part) if piece.swap else part)
        return torch.cat(parts, dim=0)

    def scatter(self, parameters: Mapping[str, torch.Tensor], key: str, tensor: torch.Tensor) -> None:
        for piece in self.groups[key]:
            part = tensor[piece.start : piece.stop]
            target = parameters[piece.param]
            target.copy_((_swap(part) if piece.swap else part).to(target.dtype))

    def target(self, param: str, op: WeightOp) -> tuple[str, WeightOp]:
        """Where an op on module parameter `param` goes: its group (on its rows) or itself."""
        found = self.owner.get(param)
        if found is None:
            return param, op
        key, piece = found
        return key, partial(_piece_op, piece, op)


def _piece_op(piece: Piece, op: WeightOp, stored: torch.Tensor) -> torch.Tensor:
    part = stored[piece.start : piece.stop].clone()
    if piece.swap:
        part = _swap(part)
    part = op(part)
    stored[piece.start : piece.stop] = _swap(part) if piece.swap else part
    return stored


def stored_layout(module: nn.Module, translator: Translator | None) -> StoredLayout:
    """The groups of `module`'s parameters that the stored layout fuses or reorders."""
    layout = StoredLayout()
    if translator is None:
        return layout
    for name, parameter in (*module.named_parameters(), *quantized_weights(module).items()):
        source = translator.source(name)
        if source is None or source.op not in (ROWS, SWAP_HALVES):
            continue
        if source.op == ROWS:
            piece = Piece(name, source.start, source.stop, swap=False)
        else:
            piece = Piece(name, 0, parameter.shape[0], swap=True)
        key = STORED + source.key
        layout.groups.setdefault(key, []).append(piece)
        layout.owner[name] = (key, piece)
    for pieces in layout.groups.values():
        pieces.sort(key=lambda piece: piece.start)
    return layout
