"""What the transformer families share: the UNet-shaped call they hand the sampler, where a
transformer sits in a file, and UNETLoader's `weight_dtype` storage.

The sampler calls its network like a diffusers UNet (`net(x, timestep, encoder_hidden_states,
added_cond_kwargs=..., return_dict=False)`) and reads its `config`. A transformer family wraps
its diffusers transformer in a subclass whose `forward` packs, positions and unpacks the latent
for that transformer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from comfyd.models.families.base import UNET_PREFIX

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


def store_weights(net: Any, storage: torch.dtype | None, compute_dtype: torch.dtype) -> None:
    """Keep the weights in `storage` (fp8), each layer cast up to the compute dtype while it runs."""
    if storage is not None:
        net.enable_layerwise_casting(storage_dtype=storage, compute_dtype=compute_dtype)


def load_transformer(
    tf: Any, plan: Any, weight_dtype: str, module: nn.Module, translator: Any, what: str
) -> nn.Module:
    """A family's diffusers transformer (`module`, built empty) filled from `tf` through
    `translator`, on the plan's device in its compute dtype, stored as UNETLoader's `weight_dtype` asks."""
    from comfyd.models.loader import materialize

    storage = storage_dtype(weight_dtype)
    net = materialize(module, translator, tf, plan.device, plan.unet_dtype, what=what)
    store_weights(net, storage, plan.unet_dtype)
    return net
