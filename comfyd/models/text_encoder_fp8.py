"""Text encoders whose file stores the weights in fp8 (`t5xxl_fp8_e4m3fn.safetensors`,
`umt5_xxl_fp8_e4m3fn.safetensors`) keep their linear weights in fp8, each layer cast up to the
compute dtype while it runs, as ComfyUI keeps them (its T5 is built in the dtype of the file's
`encoder.final_layer_norm.weight` and casts each weight as it is used). A 4.7B-parameter T5-XXL
then holds ~4.9 GB instead of ~9.5 GB in bf16. fp8 -> 16/32 bit is exact, so the conditioning is
the one the upcast-at-load encoder computes.

Only the linear layers stay in fp8; embeddings and norms are read into the compute dtype (the
transformers encoders read those weights' dtype to pick their own, ~0.3 GB of T5-XXL). A unit
whose parameters all sit in linear layers (T5's feed-forward block) is cast as one, because
transformers' T5 compares its hidden states with `wo.weight.dtype` before the last projection.
"Scaled" fp8 files (a `scaled_fp8` marker, a scale per weight) are dequantized at load instead.

Call `keep_linears_in` on the empty (meta) encoder before `loader.materialize`, which then reads
each fp8 weight straight into its fp8 storage. The casts change the weights' dtype while a unit
runs, so two forwards on one such encoder would see each other's casts: its forward takes a lock
(on a CPU the device gate lets encodes run side by side).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import torch
from torch import nn

from comfyd.models.tensorfile import FP8_DTYPES


def t5_storage_dtype(tf: Any, prefix: str) -> torch.dtype | None:
    """The fp8 dtype a T5 / UMT5 encoder under `prefix` is kept in, or None (the compute dtype).
    ComfyUI's rule reads `encoder.final_layer_norm.weight`; a file whose norms are 16 bit but whose
    linear weights are fp8 counts too (block 0's query weight). Scaled-fp8 files: None."""
    keys = set(tf.keys())
    if f"{prefix}scaled_fp8" in keys or "scaled_fp8" in keys:
        return None
    if any(k.startswith(prefix) and k.endswith((".scale_weight", ".weight_scale")) for k in keys):
        return None  # scales without the marker: dequantized at load as well
    for key in (
        f"{prefix}encoder.final_layer_norm.weight",
        f"{prefix}encoder.block.0.layer.0.SelfAttention.q.weight",
    ):
        if key in keys and tf.dtype(key) in FP8_DTYPES:
            return tf.dtype(key)
    return None


def _linear_only(module: nn.Module) -> bool:
    """Whether every parameter under `module` belongs to a Linear, there is one at least, and it
    holds no buffers (casting a unit casts its floating buffers too)."""
    if any(True for _ in module.buffers()):
        return False
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return False
    in_linears = sum(1 for m in linears for _ in m.parameters(recurse=False))
    return in_linears == sum(1 for _ in module.parameters())


def cast_units(module: nn.Module) -> list[nn.Module]:
    """The submodules cast as one: the largest ones holding only linear layers."""
    units: list[nn.Module] = []
    for child in module.children():
        if _linear_only(child):
            units.append(child)
        else:
            units.extend(cast_units(child))
    return units


def keep_linears_in(encoder: nn.Module, storage: torch.dtype | None, compute: torch.dtype) -> int:
    """Keep `encoder`'s linear weights in `storage` (None: nothing changes), each cast unit moved
    to `compute` while it runs and back afterwards; returns how many units are cast."""
    if storage is None:
        return 0
    from diffusers.hooks.layerwise_casting import apply_layerwise_casting_hook

    units = cast_units(encoder)
    for unit in units:
        apply_layerwise_casting_hook(unit, storage, compute, non_blocking=False)
    _one_forward_at_a_time(encoder)
    return len(units)


def _one_forward_at_a_time(encoder: nn.Module) -> None:
    lock = threading.Lock()
    forward = encoder.forward

    @functools.wraps(forward)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return forward(*args, **kwargs)

    encoder.forward = locked  # type: ignore[method-assign]
