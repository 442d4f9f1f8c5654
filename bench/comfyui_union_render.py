"""Render the union ControlNet fidelity cases with ComfyUI (bench/comfyui_render.py, same options).

    python bench/comfyui_union_render.py --comfyui PATH --models-dir D --input-dir D --out DIR \
        tests/fidelity/workflows/controlnet_union_*.json

ComfyUI 0.3.64 reads a union ControlNet (ControlNet++) only in the diffusers layout, and it reads
a diffusers ControlNet only when its down half matches one of a fixed table of full-size UNet
configs (comfy/model_detection.py, unet_config_from_diffusers_unet). A full-size SD1.5 union
ControlNet needs a full-size UNet to drive (the residuals must fit its skip connections): about
1.2 billion random parameters, out of reach of the shared CPU machine the tests run on.

So this script adds one entry to that table, and changes nothing else: when no table entry
matches a diffusers ControlNet, the config ComfyUI's own detector (model_config_from_unet)
infers from the parity checkpoint's UNet is returned, if the ControlNet's down half has that
UNet's model channels, context width and block depths. ComfyUI's ControlNet loader then converts
the keys, reads the union parts (task embedding, control-type embedding, transformer), builds its
cldm.ControlNet and samples exactly as it does for a full-size file.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import comfyui_render  # noqa: E402

PARITY_CHECKPOINT = "checkpoints/comfyd-parity-sd1.safetensors"
UNET_PREFIX = "model.diffusion_model."


def _parity_unet_config(models_dir: Path) -> dict[str, Any]:
    utils = importlib.import_module("comfy.utils")
    detection = importlib.import_module("comfy.model_detection")
    state = utils.load_torch_file(str(models_dir / PARITY_CHECKPOINT), safe_load=True)
    unet = {k: v for k, v in state.items() if k.startswith(UNET_PREFIX)}
    config = detection.model_config_from_unet(unet, UNET_PREFIX).unet_config
    return dict(config)


def _extend_diffusers_table(models_dir: Path) -> None:
    detection = importlib.import_module("comfy.model_detection")
    table_lookup = detection.unet_config_from_diffusers_unet
    parity = _parity_unet_config(models_dir)
    shallow = {k: v for k, v in parity.items() if k in ("model_channels", "in_channels", "context_dim")}

    def lookup(state_dict: dict[str, Any], dtype: Any = None) -> dict[str, Any] | None:
        found = table_lookup(state_dict, dtype)
        if found is not None or "controlnet_cond_embedding.conv_in.weight" not in state_dict:
            return found
        fits = (
            state_dict["conv_in.weight"].shape[0] == shallow["model_channels"]
            and state_dict["conv_in.weight"].shape[1] == shallow["in_channels"]
            and len(parity["channel_mult"]) == 1 + max(
                int(k.split(".")[1]) for k in state_dict if k.startswith("down_blocks.")
            )
        )
        if not fits:
            return None
        print("note: a diffusers ControlNet cut like the parity UNet: using the parity UNet's config")
        config = detection.convert_config(dict(parity))
        config["dtype"] = dtype
        return config

    detection.unet_config_from_diffusers_unet = lookup


def main(argv: list[str] | None = None) -> int:
    load = comfyui_render.load_comfyui

    def load_and_extend(root: Path, models_dir: Path, *args: Any, **kwargs: Any) -> dict[str, Any]:
        comfy = load(root, models_dir, *args, **kwargs)
        _extend_diffusers_table(models_dir)
        return comfy

    comfyui_render.load_comfyui = load_and_extend  # type: ignore[assignment]
    return comfyui_render.main(argv)


if __name__ == "__main__":
    sys.exit(main())
