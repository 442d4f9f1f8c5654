"""Random-weight image-prompt models for tests and fidelity cases, in layouts ComfyUI reads unaided.

- `write_clip_vision`: a CLIP vision tower in a standalone file, transformers names or OpenCLIP's
  (`visual.*`). ComfyUI builds towers from fixed configs, so this is a full-size ViT-L (about 300M
  parameters, 600 MB in fp16); it takes a few seconds. Kind `tiny-vit-h` (tests, Wan 2.1 I2V) is
  a two-layer tower of ViT-H's width that only comfyd reads (marked in the file's metadata).
- `write_style_model`: a T2I-Adapter style model (ComfyUI's fixed sizes, about 38M parameters).
- `write_unclip_checkpoint`: an SD2.1 unCLIP-L checkpoint, the sd2_unclip family's tiny or parity
  architecture, with (optionally) its ViT-L tower under `embedder.model.visual.`.
Weights come from `comfyd.models.tiny`'s seeded generator and are stored in fp16.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from comfyd.models import clip_vision
from comfyd.models.keymap import to_original
from comfyd.models.tiny import SIZES, _generator, _init_value, original_state, random_weights

UNCLIP_FAMILY = "sd2_unclip"
STORAGE_DTYPE = torch.float16


def _random_state(module: nn.Module, seed: int, component: str) -> dict[str, torch.Tensor]:
    generator = _generator(seed, component)
    return {
        name: _init_value(name, param.shape, generator).to(STORAGE_DTYPE)
        for name, param in module.named_parameters()
    }


def random_clip_vision_state(kind: str = "vit-l", seed: int = 0) -> dict[str, torch.Tensor]:
    """A random tower's parameters under transformers' names."""
    from accelerate import init_empty_weights
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with init_empty_weights():
        model = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_vision.VISION_CONFIGS[kind]))
    return _random_state(model, seed, f"clip_vision_{kind}")


def openclip_visual_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """transformers-named tower parameters rewritten with OpenCLIP's visual names under `prefix`."""
    return to_original(state, clip_vision._OpenClipVisualNames(prefix))


def write_clip_vision(path: Path, kind: str = "vit-l", seed: int = 0, layout: str = "hf") -> Path:
    if layout not in ("hf", "openclip"):
        raise ValueError(f"layout must be 'hf' or 'openclip', not {layout!r}")
    state = random_clip_vision_state(kind, seed)
    if layout == "openclip":
        state = openclip_visual_state(state, clip_vision.STANDALONE_OPENCLIP_PREFIX)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"comfyd.random_weights": f"clip_vision {kind} {layout} seed={seed}"}
    if kind == clip_vision.TINY_KIND:
        metadata[clip_vision.TINY_MARK] = kind  # the only way the tiny config is recognised
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=metadata)
    return path


def write_style_model(path: Path, seed: int = 0) -> Path:
    from comfyd.models.style_model import StyleAdapter

    state = _random_state(StyleAdapter(), seed, "style_model")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"comfyd.random_weights": f"style_model seed={seed}"})  # fmt: skip
    return path


def write_unclip_checkpoint(
    path: Path, seed: int = 0, size: str = "tiny", with_clip_vision: bool = True, prediction: str = "eps"
) -> Path:
    """An SD2.1 unCLIP-L single file; `prediction` is marked as for SD2 (ComfyUI's rule)."""
    configs = SIZES[size](UNCLIP_FAMILY)
    state = original_state(configs, random_weights(configs, seed, prediction))
    if with_clip_vision:
        from comfyd.models.families import get

        prefix = get(UNCLIP_FAMILY).clip_vision_prefix or ""
        state.update(openclip_visual_state(random_clip_vision_state("vit-l", seed), prefix))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path),
              metadata={"comfyd.random_weights": f"{UNCLIP_FAMILY} {size} seed={seed}"})  # fmt: skip
    return path
