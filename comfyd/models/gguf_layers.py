"""Layers whose weight stays GGUF-quantized on the device and is dequantized in the forward.

A model is built empty (meta device) and filled by `loader.materialize`; a Linear or Embedding
weight stored in a block-quantized GGUF type with a torch dequantizer (`gguf_dequant`) is not
converted there but kept as its raw blocks: a uint8 buffer `gguf_blocks` on the compute device
(rows of blocks, so the dim-0 slices of fused tensors, such as Flux's q/k/v, are byte slices),
plus its type and logical shape. `install` then turns the layer into its GGUF kind (the same
object, its class swapped, so tied references and `isinstance(layer, nn.Linear)` still hold);
each forward dequantizes the weight to float32 (bit-identical to `gguf.quants.dequantize`),
converts it exactly as the load-time path would have (rounding dtype, then the compute dtype)
and drops it after use. Memory accounting sees the buffer, that is the quantized bytes.

LoRAs: a patched layer dequantizes once, applies the changes in float32 and keeps that weight
(the buffer `gguf_patched`) until the patches are removed; the blocks are never modified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional

from comfyd.models.gguf_dequant import dequantize


@dataclass(frozen=True)
class QuantizedTensor:
    """Raw GGML blocks of one tensor: `blocks` is uint8 `[rows, row_bytes]`, `shape` the logical
    shape (its last dim spread over the row's blocks), `type_name` the GGML type."""

    blocks: torch.Tensor
    type_name: str
    shape: tuple[int, ...]


# Layers whose weight may stay quantized: their forward is rewritten here with the weight passed in.
_KINDS: dict[type[nn.Module], type[nn.Module]] = {}


class _QuantizedWeight:
    """What the GGUF layers share: the blocks, their dequantization and the LoRA-patched weight."""

    gguf_blocks: torch.Tensor
    gguf_patched: torch.Tensor | None
    gguf_type: str
    gguf_shape: tuple[int, ...]
    gguf_dtype: torch.dtype
    gguf_rounding: torch.dtype | None

    @property
    def weight(self) -> torch.Tensor:
        """The weight, dequantized now (a new tensor each time), for code that reads a layer's
        weight outside its forward (transformers' T5 checks its dtype, CLIP its device)."""
        return self.dequantized()

    def dequantized(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The weight (or only `rows` of it) in the compute dtype, on the blocks' device."""
        if self.gguf_patched is not None:
            return self.gguf_patched if rows is None else self.gguf_patched[rows]
        blocks, shape = self.gguf_blocks, self.gguf_shape
        if rows is not None:
            blocks = blocks[rows.reshape(-1)]
            shape = (*rows.shape, *shape[1:])
        values = dequantize(blocks, self.gguf_type, shape)
        if self.gguf_rounding is not None:
            values = values.to(self.gguf_rounding)
        return values.to(self.gguf_dtype)


class GGUFLinear(_QuantizedWeight, nn.Linear):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.linear(input, self.dequantized(), self.bias)


class GGUFEmbedding(_QuantizedWeight, nn.Embedding):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.max_norm is not None:  # renormalizes rows in place: needs the whole weight
            return functional.embedding(input, self.dequantized(), self.padding_idx, self.max_norm)
        return self.dequantized(rows=input)  # only the rows asked for are dequantized


_KINDS.update({nn.Linear: GGUFLinear, nn.Embedding: GGUFEmbedding})


def can_hold(module: nn.Module, name: str, tensor: QuantizedTensor, expected: tuple[int, ...]) -> bool:
    """Whether parameter `name` of `module` can stay quantized: the weight of a plain Linear or
    Embedding whose shape matches."""
    owner_name, _, leaf = name.rpartition(".")
    if leaf != "weight":
        return False
    owner = module.get_submodule(owner_name) if owner_name else module
    return type(owner) in _KINDS and tuple(tensor.shape) == tuple(expected)


def install(
    module: nn.Module,
    held: dict[str, QuantizedTensor],
    device: torch.device,
    dtype: torch.dtype,
    rounding: torch.dtype | None = None,
) -> None:
    """Turn the layers whose weights `held` names into GGUF layers holding those blocks."""
    for name, tensor in held.items():
        owner_name = name.rpartition(".")[0]
        owner = module.get_submodule(owner_name) if owner_name else module
        if isinstance(owner, _QuantizedWeight):
            continue  # a tied weight, reached under a second name
        kind = _KINDS[type(owner)]
        owner._parameters.pop("weight", None)
        owner.__class__ = kind
        owner.register_buffer("gguf_blocks", tensor.blocks.to(device))
        owner.register_buffer("gguf_patched", None)
        owner.gguf_type = tensor.type_name
        owner.gguf_shape = tuple(tensor.shape)
        owner.gguf_dtype = dtype
        owner.gguf_rounding = rounding if rounding is not None and rounding != dtype else None


class QuantizedSlot:
    """A quantized weight as the LoRA patcher reads and writes it: `detach()` gives its current
    values (a new tensor), `copy_` keeps a patched weight beside the blocks."""

    def __init__(self, layer: _QuantizedWeight) -> None:
        self.layer = layer
        self.dtype = layer.gguf_dtype
        self.shape = torch.Size(layer.gguf_shape)

    def detach(self) -> torch.Tensor:
        return self.layer.dequantized().clone()

    def copy_(self, values: torch.Tensor) -> QuantizedSlot:
        self.layer.gguf_patched = values.to(self.layer.gguf_blocks.device, self.layer.gguf_dtype)
        return self

    def patch(self, changes: list[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        patched = self.detach().to(torch.float32)
        for change in changes:
            patched = change(patched)
        self.copy_(patched)


def quantized_weights(module: nn.Module) -> dict[str, QuantizedSlot]:
    """Parameter name -> slot, for each weight of `module` kept quantized."""
    return {
        f"{name}.weight" if name else "weight": QuantizedSlot(sub)
        for name, sub in module.named_modules()
        if isinstance(sub, _QuantizedWeight)
    }


def drop_patches(module: nn.Module) -> None:
    """Back to the blocks: the patched weights of `module`'s GGUF layers are dropped."""
    for sub in module.modules():
        if isinstance(sub, _QuantizedWeight) and sub.gguf_patched is not None:
            sub.gguf_patched = None


def quantized_bytes(module: nn.Module) -> int:
    """Bytes of the blocks `module`'s GGUF layers hold."""
    return sum(sub.gguf_blocks.numel() for sub in module.modules() if isinstance(sub, _QuantizedWeight))
