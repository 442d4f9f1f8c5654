"""Loading ControlNets and T2I-Adapters of `controlnet/` (ComfyUI's ControlNetLoader and
DiffControlNetLoader) into diffusers modules.

The layout is detected from the keys (`control_detect`); the module is built empty from the
inferred config and filled tensor by tensor, as checkpoints are. A "diff" ControlNet (a
`difference` marker) stores its UNet half as a difference to the model it was trained from:
its DiffControlNetLoader adds that model's UNet weights, as ComfyUI does; without a model the
difference is used as it is (ComfyUI warns and does the same).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights

from comfyd.models.control_detect import (
    CONTROLNET,
    DIFFERENCE_KEY,
    ControlInfo,
    UnknownControlLayout,
    detect_control,
)
from comfyd.models.control_union import attach_union_parts
from comfyd.models.device_gate import DeviceGate
from comfyd.models.devices import ComputePlan
from comfyd.models.loader import materialize
from comfyd.models.tensorfile import ModelFileError, TensorFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ControlModelHandle:
    """A loaded control model: the diffusers module and how ComfyUI drives it."""

    key: str
    name: str
    kind: str  # control_detect.CONTROLNET | T2I_ADAPTER
    module: Any  # diffusers ControlNetModel | T2IAdapter
    device: torch.device
    dtype: torch.dtype
    family: str | None = None
    hint_channels: int = 3
    # ComfyUI turns on global average pooling for files named *_shuffle (the shuffle ControlNet).
    global_average_pooling: bool = False
    union_types: int = 0  # a union ControlNet: how many control types it knows (0: not a union)
    gate: DeviceGate | None = field(default=None, compare=False, repr=False)


def _empty_module(info: ControlInfo) -> Any:
    from diffusers import ControlNetModel, T2IAdapter

    with init_empty_weights():
        if info.kind != CONTROLNET:
            return T2IAdapter.from_config(dict(info.config))
        module = ControlNetModel.from_config(dict(info.config))
        if info.union is not None:
            attach_union_parts(module, info.union, module.time_embedding.linear_2.out_features)
        return module


def _shuffle_name(path: Path) -> bool:
    stem = os.path.splitext(path.name)[0]
    return stem.endswith(("_shuffle", "_shuffle_fp16"))


def load_control_model(
    path: Path,
    key: str,
    name: str,
    plan: ComputePlan,
    allow_pickle: bool = False,
    gate: DeviceGate | None = None,
    base_unet: Any = None,
) -> ControlModelHandle:
    """The ControlNet / T2I-Adapter in `path`; `base_unet` (a diffusers UNet) completes a diff
    ControlNet."""
    with TensorFile(path, allow_pickle=allow_pickle) as tf:
        keys = tf.keys()
        weight_dtype = next((tf.dtype(k) for k in keys if k.endswith(".weight")), torch.float32)
        try:
            info = detect_control(keys, tf.shapes(), name, tf.metadata)
        except UnknownControlLayout:
            raise
        except (KeyError, ValueError) as exc:
            raise UnknownControlLayout(f"{name}: cannot read the control model's layout: {exc}") from None
        try:
            module = materialize(
                _empty_module(info), info.translator, tf, plan.device, plan.unet_dtype, what="control model"
            )
        except UnknownControlLayout:
            raise
        except (RuntimeError, ValueError) as exc:
            raise ModelFileError(f"{name}: cannot build the control model: {exc}") from None
    if info.difference:
        if base_unet is None:
            log.warning("%s is a diff ControlNet loaded without a model; it will very likely not work", name)
        else:
            _add_base_weights(module, base_unet, weight_dtype)
    hint_channels = int(info.config.get("conditioning_channels", info.config.get("in_channels", 3)))
    return ControlModelHandle(
        key=key,
        name=name,
        kind=info.kind,
        module=module,
        device=plan.device,
        dtype=plan.unet_dtype,
        family=info.family,
        hint_channels=hint_channels,
        global_average_pooling=_shuffle_name(path),
        union_types=info.union.types if info.union is not None else 0,
        gate=gate,
    )


def control_is_difference(path: Path, allow_pickle: bool = False) -> bool:
    """Whether the file is a diff ControlNet (only those depend on the model they are loaded with)."""
    with TensorFile(path, allow_pickle=allow_pickle) as tf:
        return DIFFERENCE_KEY in tf

def _add_base_weights(module: Any, unet: Any, stored: torch.dtype) -> None:
    """Every ControlNet tensor that is also a UNet tensor (same diffusers name) gets the UNet's
    added, the sum rounded to the file's dtype as ComfyUI adds them in the stored tensors."""
    base = unet.state_dict()
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name in base and base[name].shape == tensor.shape:
                total = tensor.to(stored) + base[name].to(device=tensor.device, dtype=stored)
                tensor.copy_(total.to(tensor.dtype))
