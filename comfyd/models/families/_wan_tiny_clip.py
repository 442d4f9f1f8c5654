"""Tiny random-weight Wan 2.1 image-to-video files with the CLIP-vision path (`comfyd models
make-tiny --family wan` writes them beside `_wan_tiny`'s): a 36-channel transformer with
`img_emb` (ComfyUI's fixed 1280-wide input, so ComfyUI's WanModel loads it too) and per-block
`k_img` / `v_img` / `norm_k_img`, and a CLIP vision tower of ViT-H's width (`clip_vision.TINY_KIND`:
two narrow layers at 28 px, a comfyd-only test tower; ComfyUI's loader knows full-size towers only).
"""

from __future__ import annotations

from pathlib import Path

from comfyd.models.families import _wan_transformer as transformer
from comfyd.models.families._wan_tiny import TINY_I2V_TRANSFORMER, _save, _stored

CLIP_WIDTH = 1280  # ViT-H's width: ComfyUI's img_emb takes nothing else
TINY_I2V_CLIP_TRANSFORMER = {
    **TINY_I2V_TRANSFORMER,
    "image_dim": CLIP_WIDTH,
    "added_kv_proj_dim": TINY_I2V_TRANSFORMER["num_attention_heads"] * transformer.HEAD_DIM,
}
NAMES = {
    "i2v_clip": "diffusion_models/comfyd-tiny-wan-i2v-clip.safetensors",
    "clip_vision": "clip_vision/comfyd-tiny-clip-vision-h.safetensors",
}


def write_tiny_wan_clip(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import clip_vision, tiny
    from comfyd.models.tiny_vision import write_clip_vision

    net = tiny.random_module(transformer.empty_transformer(TINY_I2V_CLIP_TRANSFORMER), seed, "wan-i2v-clip")
    written = [_save(_stored(net, transformer.original_name), root / NAMES["i2v_clip"])]
    written.append(write_clip_vision(root / NAMES["clip_vision"], clip_vision.TINY_KIND, seed=seed))
    return written
