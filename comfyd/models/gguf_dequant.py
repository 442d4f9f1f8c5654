"""GGML block formats dequantized with torch, on whatever device the blocks sit.

Each function takes the raw blocks of one type as a uint8 tensor `[n_blocks, type_size]` and
returns float32 values `[n_blocks, block_size]`. The arithmetic is the `gguf` library's (its
`gguf.quants` numpy reference), operation for operation: the same float32 products and sums in
the same order, so the values are bit-identical to `gguf.quants.dequantize` (tests hold them to
it on random blocks). Every op is elementwise, a shift or a reshape: no device-specific kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch

QK_K = 256  # values in a K-quant super-block
# type name -> (values per block, bytes per block), GGML's layout.
BLOCKS: dict[str, tuple[int, int]] = {
    "BF16": (1, 2),
    "Q4_0": (32, 2 + 16),
    "Q4_1": (32, 2 + 2 + 16),
    "Q5_0": (32, 2 + 4 + 16),
    "Q5_1": (32, 2 + 2 + 4 + 16),
    "Q8_0": (32, 2 + 32),
    "Q2_K": (QK_K, 2 + 2 + QK_K // 16 + QK_K // 4),
    "Q3_K": (QK_K, 2 + QK_K // 4 + QK_K // 8 + 12),
    "Q4_K": (QK_K, 2 + 2 + QK_K // 2 + 12),
    "Q5_K": (QK_K, 2 + 2 + QK_K // 2 + QK_K // 8 + 12),
    "Q6_K": (QK_K, 2 + QK_K // 2 + QK_K // 4 + QK_K // 16),
}


def _split(blocks: torch.Tensor, *sizes: int) -> list[torch.Tensor]:
    """Byte fields of each block: the first `sizes`, then the rest (contiguous, for views)."""
    parts, start = [], 0
    for size in sizes:
        parts.append(blocks[:, start : start + size].contiguous())
        start += size
    parts.append(blocks[:, start:].contiguous())
    return parts


def _half(field: torch.Tensor) -> torch.Tensor:
    """A little-endian float16 field `[n, 2]` as float32 `[n, 1]`."""
    return field.view(torch.float16).to(torch.float32)


def _shifts(values: list[int], device: torch.device, dims: int) -> torch.Tensor:
    return _shift_table(tuple(values), device, dims)


@lru_cache(maxsize=64)
def _shift_table(values: tuple[int, ...], device: torch.device, dims: int) -> torch.Tensor:
    # Made once per device (no host-to-device copy in every forward), as a normal tensor even when
    # first asked for under inference mode, so that later uses in any mode may read it.
    shape = [1] * dims
    shape[-2] = len(values)
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.uint8, device=device).reshape(shape)


def _nibbles(qs: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """Low nibbles of each `width`-byte group first, then the high ones: `[n, -1]` uint8."""
    split = qs.reshape(n, -1, 1, width) >> _shifts([0, 4], qs.device, 4)
    return (split & 0x0F).reshape(n, -1)


def _bits(packed: torch.Tensor, n: int, count: int, width: int) -> torch.Tensor:
    """`count` bit planes of `width` bytes each (bit i of every byte, i = 0..count-1)."""
    split = packed.reshape(n, -1, 1, width) >> _shifts(list(range(count)), packed.device, 4)
    return split & 0x01


def bf16(blocks: torch.Tensor) -> torch.Tensor:
    return blocks.contiguous().view(torch.bfloat16).to(torch.float32).reshape(blocks.shape[0], 1)


def q8_0(blocks: torch.Tensor) -> torch.Tensor:
    d, x = _split(blocks, 2)
    return x.view(torch.int8).to(torch.float32) * _half(d)


def q4_0(blocks: torch.Tensor) -> torch.Tensor:
    d, qs = _split(blocks, 2)
    q = _nibbles(qs, blocks.shape[0], 16).to(torch.int8) - 8
    return _half(d) * q.to(torch.float32)


def q4_1(blocks: torch.Tensor) -> torch.Tensor:
    d, m, qs = _split(blocks, 2, 2)
    q = _nibbles(qs, blocks.shape[0], 16).to(torch.float32)
    return (_half(d) * q) + _half(m)


def _q5_values(qh: torch.Tensor, qs: torch.Tensor, n: int) -> torch.Tensor:
    # qh: 32 high bits, little-endian; bit i is value i's fifth bit.
    high = (_bits(qh, n, 8, 4).reshape(n, 8, 4).transpose(1, 2)).reshape(n, 32)
    return _nibbles(qs, n, 16) | (high << 4)


def q5_0(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, qh, qs = _split(blocks, 2, 4)
    q = _q5_values(qh, qs, n).to(torch.int8) - 16
    return _half(d) * q.to(torch.float32)


def q5_1(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, m, qh, qs = _split(blocks, 2, 2, 4)
    q = _q5_values(qh, qs, n).to(torch.float32)
    return (_half(d) * q) + _half(m)


def q2_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    scales, qs, d, dmin = _split(blocks, QK_K // 16, QK_K // 4, 2)
    dl = (_half(d) * (scales & 0x0F).to(torch.float32)).reshape(n, QK_K // 16, 1)
    ml = (_half(dmin) * (scales >> 4).to(torch.float32)).reshape(n, QK_K // 16, 1)
    q = (qs.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], blocks.device, 4)) & 0x03
    q = q.reshape(n, QK_K // 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def q3_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    hmask, qs, scales, d = _split(blocks, QK_K // 8, QK_K // 4, 12)
    # 16 six-bit scales: low nibbles in bytes 0-7, their top two bits in bytes 8-11.
    low = (scales[:, :8].reshape(n, 1, 8) >> _shifts([0, 4], blocks.device, 3)).reshape(n, 16)
    high = (scales[:, 8:].reshape(n, 1, 4) >> _shifts([0, 2, 4, 6], blocks.device, 3)).reshape(n, 16)
    sc = ((low & 0x0F) | ((high & 0x03) << 4)).to(torch.int8) - 32
    dl = (_half(d) * sc.to(torch.float32)).reshape(n, 16, 1)
    ql = (qs.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], blocks.device, 4)).reshape(
        n, 16, QK_K // 16
    ) & 0x03
    qh = _bits(hmask, n, 8, 32).reshape(n, 16, QK_K // 16) ^ 0x01  # a set bit means no offset
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _scale_min(scales: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The eight 6-bit scales and mins of a Q4_K / Q5_K super-block (12 packed bytes)."""
    rows = scales.reshape(n, 3, 4)
    d, m, md = rows[:, 0], rows[:, 1], rows[:, 2]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mins = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc, mins


def _k_scaled(
    d: torch.Tensor, dmin: torch.Tensor, scales: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    sc, mins = _scale_min(scales, n)
    dl = (_half(d) * sc.to(torch.float32)).reshape(n, -1, 1)
    ml = (_half(dmin) * mins.to(torch.float32)).reshape(n, -1, 1)
    return dl, ml


def q4_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin, scales, qs = _split(blocks, 2, 2, 12)
    dl, ml = _k_scaled(d, dmin, scales, n)
    q = _nibbles(qs, n, 32).reshape(n, -1, 32).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def q5_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    d, dmin, scales, qh, qs = _split(blocks, 2, 2, 12, QK_K // 8)
    dl, ml = _k_scaled(d, dmin, scales, n)
    low = _nibbles(qs, n, 32).reshape(n, -1, 32)
    high = _bits(qh, n, 8, 32).reshape(n, -1, 32)
    q = (low | (high << 4)).to(torch.float32)
    return (dl * q - ml).reshape(n, QK_K)


def q6_k(blocks: torch.Tensor) -> torch.Tensor:
    n = blocks.shape[0]
    ql, qh, scales, d = _split(blocks, QK_K // 2, QK_K // 4, QK_K // 16)
    dl = (_half(d) * scales.view(torch.int8).to(torch.float32)).reshape(n, QK_K // 16, 1)
    low = _nibbles(ql, n, 64).reshape(n, -1, 32)
    high = ((qh.reshape(n, -1, 1, 32) >> _shifts([0, 2, 4, 6], blocks.device, 4)) & 0x03).reshape(n, -1, 32)
    q = ((low | (high << 4)).to(torch.int8) - 32).reshape(n, QK_K // 16, -1).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


DEQUANTIZERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "BF16": bf16, "Q8_0": q8_0, "Q4_0": q4_0, "Q4_1": q4_1, "Q5_0": q5_0, "Q5_1": q5_1,
    "Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k,
}  # fmt: skip


def row_bytes(type_name: str, values: int) -> int | None:
    """Bytes of a row of `values` values stored as `type_name`; None when blocks do not tile it."""
    block, size = BLOCKS[type_name]
    return values // block * size if values % block == 0 else None


def dequantize(raw: torch.Tensor, type_name: str, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 values of shape `shape` from `raw`, its blocks as uint8 (any shape, rows whole)."""
    block, size = BLOCKS[type_name]
    blocks = raw.reshape(-1, size)
    return DEQUANTIZERS[type_name](blocks).reshape(shape)
