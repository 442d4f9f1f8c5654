"""What the transformer families share: the UNet-shaped call they hand the sampler, where a
transformer sits in a file, and its loading: UNETLoader's `weight_dtype` storage, fp8 files kept
in fp8, each tensor read straight into the dtype it is kept in.

The sampler calls its network like a diffusers UNet (`net(x, timestep, encoder_hidden_states,
added_cond_kwargs=..., return_dict=False)`) and reads its `config`. A transformer family wraps
its diffusers transformer in a subclass whose `forward` packs, positions and unpacks the latent
for that transformer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from comfyd.models.detect import UnknownCheckpointLayout
from comfyd.models.families.base import UNET_PREFIX
from comfyd.models.tensorfile import FP8_DTYPES

# UNETLoader's weight_dtype -> the dtype the weights are stored in (None: the compute dtype).
# "_fast" computes like the others here (no fp8 matmuls).
WEIGHT_DTYPES = {
    "default": None,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


class TransformerNetwork(nn.Module):
    """Holds a diffusers transformer and shows its config; subclasses define `forward`."""

    def __init__(self, transformer: nn.Module) -> None:
        super().__init__()
        self.transformer = transformer

    @property
    def config(self) -> Any:
        return self.transformer.config


def transformer_prefix(keys: set[str], is_transformer: Callable[[set[str], str], bool]) -> str | None:
    """Where a family's transformer sits in a file: "" (a diffusion-model file), the checkpoint
    prefix (an all-in-one file), or None (not there)."""
    for prefix in ("", UNET_PREFIX):
        if is_transformer(keys, prefix):
            return prefix
    return None


def storage_dtype(weight_dtype: str) -> torch.dtype | None:
    """The storage dtype UNETLoader's `weight_dtype` asks for (None: as computed)."""
    if weight_dtype not in WEIGHT_DTYPES:
        raise ValueError(f"weight_dtype must be one of {list(WEIGHT_DTYPES)}, got {weight_dtype!r}")
    return WEIGHT_DTYPES[weight_dtype]


def store_weights(
    net: Any, storage: torch.dtype | None, compute_dtype: torch.dtype, keep: tuple[str, ...] | None = None
) -> None:
    """Keep the weights in `storage` (fp8), each layer cast up to the compute dtype while it runs.
    `keep`: module-name patterns left in the compute dtype (None: the diffusers model's own, which
    spare norms and embeddings). On an empty (meta) module this only sets the dtypes
    `materialize` then reads each stored tensor straight into."""
    if storage is None:
        return
    if keep is None:
        net.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute_dtype)
        return
    from diffusers.hooks import apply_layerwise_casting

    apply_layerwise_casting(net, storage, compute_dtype, skip_modules_pattern=keep)


def fp8_compute(device: torch.device) -> bool:
    """Whether the device has fp8 matmuls (CUDA compute capability 8.9 and up), ComfyUI's test."""
    if device.type != "cuda":
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def weights_room(device: torch.device) -> int:
    """Bytes of weights ComfyUI lets a device hold: 88 % of its memory less 1.2 GB for inference."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * 0.88 - 1.2 * 1024**3)


def stored_weights(tf: Any, module: nn.Module, translator: Any) -> tuple[torch.dtype | None, int]:
    """(the dtype most of the network's stored values have, their count) in `tf`."""
    counts: dict[torch.dtype, int] = {}
    seen: set[str] = set()
    for name in module.state_dict(keep_vars=True):
        source = translator.source(name)
        if source is None or source.key in seen or source.key not in tf:
            continue
        seen.add(source.key)
        dtype = tf.dtype(source.key)
        counts[dtype] = counts.get(dtype, 0) + math.prod(tf.shape(source.key))
    if not counts:
        return None, 0
    return max(counts, key=counts.__getitem__), sum(counts.values())


def resolve_storage(
    weight_dtype: str, stored: torch.dtype | None, parameters: int, device: torch.device
) -> torch.dtype | None:
    """The dtype the weights are kept in (None: the compute dtype). UNETLoader's fp8 choices say
    it; under "default" a file stored in fp8 stays in fp8 where ComfyUI keeps it so (its
    `unet_dtype` rule): on a device with fp8 matmuls, or where the weights in 16 bits would not fit
    the device. Elsewhere they are upcast, which computes the same numbers (fp8 -> 16 bit is exact)."""
    explicit = storage_dtype(weight_dtype)
    if explicit is not None:
        return explicit
    if stored in FP8_DTYPES and (fp8_compute(device) or parameters * 2 > weights_room(device)):
        return stored
    return None


def load_transformer(
    tf: Any,
    plan: Any,
    weight_dtype: str,
    module: nn.Module,
    translator: Any,
    what: str,
    *,
    dtype: torch.dtype | None = None,
    keep: tuple[str, ...] | None = None,
    round_kept: bool = False,
) -> nn.Module:
    """A family's diffusers transformer (`module`, built empty) filled from `tf` through
    `translator`, on the plan's device, computing in `dtype` (default: the plan's UNet dtype).

    Stored in fp8 (UNETLoader's `weight_dtype`, or a file already in fp8, see `resolve_storage`),
    the empty module's cast layers are set to fp8 first, so each tensor goes from the file straight
    to its storage dtype: the load peaks at the stored size plus one tensor, never at the network
    in the compute dtype. `keep` and `round_kept`: the layers left in the compute dtype (see
    `store_weights`), and whether their values are rounded through the storage dtype, as ComfyUI
    does where it builds every parameter of the network in it."""
    from comfyd.models.loader import materialize

    compute = dtype or plan.unet_dtype
    if "scaled_fp8" in tf or f"{UNET_PREFIX}scaled_fp8" in tf:
        raise UnknownCheckpointLayout(
            f"{what} in {tf.path.name} is a 'scaled fp8' file (fp8 weights with a scale each), which "
            "comfyd does not load yet; use the plain fp8, bf16 or fp16 file"
        )
    stored, parameters = stored_weights(tf, module, translator)
    storage = resolve_storage(weight_dtype, stored, parameters, plan.device)
    store_weights(module, storage, compute, keep)
    rounding = storage if storage is not None and round_kept else None
    return materialize(module, translator, tf, plan.device, compute, rounding=rounding, what=what)
