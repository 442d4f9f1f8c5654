"""Write a diffusers pipeline folder (configs, tokenizer, optional weights) from comfyd's configs.

Used by the tiny-checkpoint writer (configs + weights) and by the load benchmark, which needs a
local config folder so that diffusers' own single-file loader runs without a hub.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfyd.models import detect, families


def _dump(path: Path, obj: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def write_tokenizer(folder: Path, options: Mapping[str, Any]) -> None:
    """The shipped CLIP vocabulary, with this encoder's tokenizer options (pad token)."""
    folder.mkdir(parents=True, exist_ok=True)
    source = detect.CONFIG_DIR / "clip_tokenizer"
    for name in ("vocab.json", "merges.txt", "LICENSE"):
        shutil.copyfile(source / name, folder / name)
    config = json.loads((source / "tokenizer_config.json").read_text())
    special = json.loads((source / "special_tokens_map.json").read_text())
    config.update(options)
    special.update({k: v for k, v in options.items() if k.endswith("_token")})
    _dump(folder / "tokenizer_config.json", config)
    _dump(folder / "special_tokens_map.json", special)


def write_diffusers_folder(
    folder: Path,
    family: str,
    unet_config: Mapping[str, Any],
    vae_config: Mapping[str, Any],
    encoder_configs: Mapping[str, Mapping[str, Any]],
    prediction: str,
    weights: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
) -> Path:
    """A diffusers pipeline folder; `weights` maps "unet" / "vae" / encoder name -> state dict."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    version = _diffusers_version()
    spec = families.get(family)
    index: dict[str, Any] = {
        "_class_name": spec.diffusers_pipeline,
        "_diffusers_version": version,
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        **spec.diffusers_index_extras,
    }
    meta = {"format": "pt"}
    for part, config in (("unet", unet_config), ("vae", vae_config)):
        _dump(folder / part / "config.json", {**config, "_diffusers_version": version})
        if weights is not None:
            save_file(
                dict(weights[part]), str(folder / part / "diffusion_pytorch_model.safetensors"), metadata=meta
            )
    for encoder in spec.encoders:
        name = encoder.name
        encoder_dir, tokenizer_dir = encoder.diffusers_folders
        config = dict(encoder_configs[name])
        architecture = config["architectures"][0]
        index[encoder_dir] = ["transformers", architecture]
        index[tokenizer_dir] = ["transformers", "CLIPTokenizer"]
        _dump(folder / encoder_dir / "config.json", config)
        if weights is not None:
            save_file(dict(weights[name]), str(folder / encoder_dir / "model.safetensors"), metadata=meta)
        write_tokenizer(folder / tokenizer_dir, encoder.tokenizer)
    scheduler = detect.shipped_config(family, "scheduler.json")
    scheduler["prediction_type"] = "v_prediction" if prediction == "v" else "epsilon"
    _dump(folder / "scheduler" / "scheduler_config.json", {**scheduler, "_diffusers_version": version})
    _dump(folder / "model_index.json", index)
    return folder
