"""Qwen2.5-VL's vision tower, as ComfyUI 0.3.64 runs it for Qwen-Image-Edit's text encoders.

Files: ComfyUI's `qwen_2.5_vl_7b*.safetensors` store it beside the language model under
`visual.*`: `patch_embed.proj` (a 3-D convolution over 2 frames of 14x14 patches),
`blocks.N.{norm1, norm2, attn.{qkv, proj}, mlp.{gate,up,down}_proj}` and
`merger.{ln_q, mlp.0, mlp.2}` (2x2 patches merged into one token of the language model's width).
These are transformers' Qwen2_5_VisionTransformerPretrainedModel names, which is what runs here.
Its math was held to ComfyUI's comfy/text_encoders/qwen_vl.py (bench/qwen_image_edit_comfyui_parity.py):
the same RMS norms, SiLU-gated MLP, 2-D rotary over (row, column) with theta 10000 on half of each
head, window attention in 112-pixel windows except blocks 7, 15, 23 and 31 (full attention), and
the same patch-merger. One difference is kept on purpose: ComfyUI does not put the merged tokens
back in raster order after the window permutation (transformers does), so `embed_image` returns
them in window order, as ComfyUI feeds them to the language model.

Config from the file's shapes: the 7B's tower is 1280 wide with 16 heads of 80; a width that is no
multiple of 80 (comfyd's tiny test files) is taken to have 8-wide heads.

Pictures (ComfyUI's `process_qwen2vl_images`): the batch's first image, resized with bilinear
interpolation (no antialiasing) to the nearest multiple of 28 on each side (clamped to
3136..12845056 pixels), normalised with CLIP's mean and std, repeated over 2 frames and cut into
14x14 patches ordered by 2x2 merge groups.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from comfyd.models import qwen25_encoder
from comfyd.models.keymap import Source

MARKER = "visual.patch_embed.proj.weight"
PATCH = 14
TEMPORAL_PATCH = 2
MERGE = 2
WINDOW = 112
FULL_ATTENTION_BLOCKS = (7, 15, 23, 31)  # ComfyUI fixes these, whatever the depth
FULL_HEAD_DIM = 80
TINY_HEAD_DIM = 8
MIN_PIXELS = 3136
MAX_PIXELS = 12845056
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def has_vision(keys: set[str], prefix: str = "") -> bool:
    return f"{prefix}{MARKER}" in keys


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """transformers Qwen2_5_VLVisionConfig values of the tower stored under `prefix`visual."""
    base = f"{prefix}visual."
    hidden = shapes[f"{base}patch_embed.proj.weight"][0]
    head_dim = FULL_HEAD_DIM if hidden % FULL_HEAD_DIM == 0 else TINY_HEAD_DIM
    if hidden % head_dim:
        raise ValueError(f"Qwen2.5-VL vision width {hidden} does not split into {head_dim}-wide heads")
    depth = 1 + max(int(k[len(base) :].split(".")[1]) for k in shapes if k.startswith(f"{base}blocks."))
    return {
        "depth": depth, "hidden_size": hidden, "num_heads": hidden // head_dim, "hidden_act": "silu",
        "intermediate_size": shapes[f"{base}blocks.0.mlp.gate_proj.weight"][0],
        "out_hidden_size": shapes[f"{base}merger.mlp.2.weight"][0], "in_channels": 3,
        "patch_size": PATCH, "temporal_patch_size": TEMPORAL_PATCH, "spatial_merge_size": MERGE,
        "window_size": WINDOW, "fullatt_block_indexes": list(FULL_ATTENTION_BLOCKS),
    }  # fmt: skip


def empty_tower(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    vision = Qwen2_5_VLConfig(vision_config=dict(config)).vision_config
    vision._attn_implementation = "sdpa"
    with init_empty_weights():
        return Qwen2_5_VisionTransformerPretrainedModel(vision)


class VisionTranslator:
    """Vision tower parameter names -> the file's `visual.*` keys under `prefix`."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        return Source(f"{self.prefix}visual.{name}")


def original_name(name: str) -> str:
    return f"visual.{name}"


def _side(size: int, factor: int) -> int:
    return round(size / factor) * factor


def resized_size(height: int, width: int) -> tuple[int, int]:
    """The (height, width) a picture of this size is resized to before patching."""
    factor = PATCH * MERGE
    h, w = _side(height, factor), _side(width, factor)
    if h * w > MAX_PIXELS:
        beta = math.sqrt(height * width / MAX_PIXELS)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < MIN_PIXELS:
        beta = math.sqrt(MIN_PIXELS / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


def patches(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(patches [rows * cols, 3 * 2 * 14 * 14], grid [[1, rows, cols]]) of an IMAGE [B, H, W, C]'s
    first picture (see the module docstring)."""
    if image.ndim != 4 or image.shape[-1] < 3 or image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError("the Qwen2.5-VL vision tower needs an IMAGE [B, H, W, 3]")
    height, width = int(image.shape[1]), int(image.shape[2])
    h, w = resized_size(height, width)
    pixels = image[0:1, :, :, :3].permute(0, 3, 1, 2).float()
    pixels = F.interpolate(pixels, size=(h, w), mode="bilinear", align_corners=False)[0]
    mean = torch.tensor(MEAN, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(STD, dtype=pixels.dtype, device=pixels.device).view(3, 1, 1)
    pixels = (pixels - mean) / std
    rows, cols = h // PATCH, w // PATCH
    frames = pixels.unsqueeze(0).expand(TEMPORAL_PATCH, -1, -1, -1)  # [frame, channel, y, x]
    # y = (row group, row in group, pixel row); x likewise; patches in 2x2 merge-group order.
    cut = frames.reshape(TEMPORAL_PATCH, 3, rows // MERGE, MERGE, PATCH, cols // MERGE, MERGE, PATCH)
    cut = cut.permute(2, 5, 3, 6, 1, 0, 4, 7)
    flat = cut.reshape(rows * cols, 3 * TEMPORAL_PATCH * PATCH * PATCH)
    return flat, torch.tensor([[1, rows, cols]], dtype=torch.long, device=pixels.device)


def embed_image(tower: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [rows * cols / 4, text width] float32, grid [[1, rows, cols]]) of a picture, in
    ComfyUI's (window) order."""
    param = next(tower.parameters())
    flat, grid = patches(image.to(param.device))
    with torch.no_grad():
        out = tower(flat.to(param.dtype), grid_thw=grid)
        # The merger again over the blocks' window-ordered output: ComfyUI's token order.
        merged = tower.merger(out.last_hidden_state)
    return merged.float(), grid


def attach_tower(encoder: nn.Module, tf: Any, plan: Any, prefix: str = "") -> bool:
    """Load the file's vision tower, if it has one, as the text encoder's `visual` submodule (so it
    moves and is offloaded with it). Returns whether there was one."""
    from comfyd.models.loader import materialize

    if not has_vision(set(tf.keys()), prefix):
        return False
    shapes = {k: v for k, v in tf.shapes().items() if k.startswith(f"{prefix}visual.")}
    tower = materialize(
        empty_tower(infer_config(shapes, prefix)), VisionTranslator(prefix), tf, plan.device, plan.clip_dtype,
        rounding=plan.clip_weight_rounding, what="Qwen2.5-VL vision tower",
    )  # fmt: skip
    qwen25_encoder.apply_weight_scales(tower, tf, prefix, stored="visual.")
    encoder.visual = tower
    return True
