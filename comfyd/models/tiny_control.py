"""Tiny random-weight ControlNets and T2I-Adapters, for tests and the fidelity cases.

A ControlNet is written for a UNet config (the tiny or the parity UNet of a family): the UNet's
input and middle blocks, the hint encoder and the zero convolutions, with random values (the
zero convolutions too, so that the control visibly changes the picture). Layouts: "original"
(ComfyUI's ldm keys, bare or under `control_model.`, as ComfyUI detects them unaided) or
"diffusers" (the names of diffusers' ControlNetModel). `difference=True` writes a diff
ControlNet: its UNet half minus the given UNet weights, with the `difference` marker.
`union_types=N` adds a union ControlNet's parts (control_union) for N control types, in the
diffusers layout, the only one ComfyUI reads them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from safetensors.torch import save_file

from comfyd.models.control_detect import (
    DIFFERENCE_KEY,
    FAMILY_METADATA,
    POOLED_METADATA,
    ControlNetTranslator,
    controlnet_config_from_unet,
)
from comfyd.models.keymap import to_original
from comfyd.models.tiny import random_module

HINT_EMBEDDING = [16, 32, 96, 256]  # the hint encoder of every SD ControlNet


def controlnet_config(unet_config: Mapping[str, Any], hint_channels: int = 3) -> dict[str, Any]:
    return controlnet_config_from_unet(dict(unet_config), hint_channels, list(HINT_EMBEDDING))


def controlnet_parameter_names(unet_config: Mapping[str, Any], hint_channels: int = 3) -> list[str]:
    """The ControlNetModel's state-dict names for `unet_config` (no weights are drawn)."""
    from diffusers import ControlNetModel

    with init_empty_weights():
        return list(ControlNetModel.from_config(controlnet_config(unet_config, hint_channels)).state_dict())


def random_controlnet_state(unet_config: Mapping[str, Any], seed: int = 0, hint_channels: int = 3) -> dict[str, torch.Tensor]:
    """A random ControlNetModel state dict (diffusers names), fp16 like the other tiny files."""
    from diffusers import ControlNetModel

    with init_empty_weights():
        module = ControlNetModel.from_config(controlnet_config(unet_config, hint_channels))
    return dict(random_module(module, seed, "controlnet").state_dict())


def write_tiny_controlnet(
    path: Path,
    unet_config: Mapping[str, Any],
    family: str,
    seed: int = 0,
    layout: str = "original",
    prefix: str = "control_model.",
    hint_channels: int = 3,
    difference_from: Mapping[str, torch.Tensor] | None = None,
    union_types: int = 0,
) -> Path:
    """Write a random ControlNet for `unet_config` to `path` (.safetensors); same seed, same bytes."""
    if layout not in ("original", "diffusers"):
        raise ValueError(f"layout must be 'original' or 'diffusers', not {layout!r}")
    state = random_controlnet_state(unet_config, seed, hint_channels)
    union = random_union_state(unet_config, seed, union_types) if union_types else {}
    if difference_from is not None:
        state = {
            k: (v.float() - difference_from[k].float()).to(v.dtype) if k in difference_from else v
            for k, v in state.items()
        }
    if layout == "original":
        translator = ControlNetTranslator(unet_config, prefix, 2 * (len(HINT_EMBEDDING) - 1))
        stored = to_original(state, translator)
    else:
        stored = dict(state)
    stored.update(union)
    if difference_from is not None:
        stored[DIFFERENCE_KEY] = torch.tensor([])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stored = {k: v.contiguous() for k, v in stored.items()}
    metadata = {FAMILY_METADATA: family}
    if "projection_class_embeddings_input_dim" in unet_config:
        pooled = unet_config["projection_class_embeddings_input_dim"] - 6 * unet_config["addition_time_embed_dim"]
        metadata[POOLED_METADATA] = str(pooled)
    save_file(stored, str(path), metadata=metadata)
    return path


def random_union_state(unet_config: Mapping[str, Any], seed: int, types: int) -> dict[str, torch.Tensor]:
    """A union ControlNet's extra tensors (file names), sized as ComfyUI sizes them: the
    transformer as wide as the hint features (320 for SD), a 256-wide embedding per type."""
    from torch import nn

    from comfyd.models.control_union import UnionConfig, attach_union_parts

    width = int(unet_config["block_out_channels"][0])
    with init_empty_weights():
        holder = nn.Module()
        attach_union_parts(holder, UnionConfig(types, width, 1, 256, width), 4 * width)
    return dict(random_module(holder, seed, "controlnet_union").state_dict())


def make_tiny_controlnet(dir: Path | str, family: str) -> Path:
    """`comfyd models make-tiny`: a ControlNet for the tiny `family` checkpoint, original layout,
    at DIR/controlnet/comfyd-tiny-<family>-controlnet.safetensors."""
    from comfyd.models.tiny import tiny_configs

    target = Path(dir) / "controlnet" / f"comfyd-tiny-{family}-controlnet.safetensors"
    return write_tiny_controlnet(target, tiny_configs(family).unet, family)


def write_tiny_t2i_adapter(path: Path, seed: int = 0, channels: int = 32, in_channels: int = 3,
                           layout: str = "original") -> Path:
    """A random full T2I-Adapter (4 levels of `channels` x 1, 2, 4, 4, two blocks each)."""
    from diffusers import T2IAdapter

    from comfyd.models.control_detect import T2IOriginalTranslator

    config = {"in_channels": in_channels, "channels": [channels, channels * 2, channels * 4, channels * 4],
              "num_res_blocks": 2, "downscale_factor": 8, "adapter_type": "full_adapter"}
    with init_empty_weights():
        module = T2IAdapter.from_config(config)
    state = dict(random_module(module, seed, "t2i_adapter").state_dict())
    stored = to_original(state, T2IOriginalTranslator()) if layout == "original" else state
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in stored.items()}, str(path))
    return path
