"""Tiny random-weight Qwen-Image files in ComfyUI's split layout (tests, demo; `comfyd models
make-tiny --family qwen-image`): a transformer in `diffusion_models/` (diffusers' names, as
ComfyUI's files use them; two blocks of two 32-wide heads), a Qwen2.5-VL language model in
`text_encoders/` (the `model.*` keys; two layers, 32 wide, 8-wide heads, Qwen2's full 152,064-row
vocabulary so the shipped tokenizer's ids fit; with a `visual.*` vision tower of eight 32-wide
blocks, so that block 7 runs ComfyUI's full attention, for Qwen-Image-Edit's picture input) and a Wan 2.1-layout VAE in `vae/` (base width 8).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyd.models import qwen25_encoder, qwen25_vision
from comfyd.models.families import _qwen_image_transformer as transformer
from comfyd.models.families import _wan_vae as video_vae

TINY_QWEN25 = {
    "vocab_size": 152064,
    "hidden_size": 32,
    "layers": 2,
    "heads": 4,
    "kv_heads": 2,
    "intermediate": 64,
}
TINY_VISION = {"depth": 8, "hidden_size": 32, "intermediate_size": 64}
TINY_TRANSFORMER = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 2, "attention_head_dim": 32,
    "num_attention_heads": 2, "joint_attention_dim": TINY_QWEN25["hidden_size"], "guidance_embeds": False,
    "axes_dims_rope": [4, 14, 14],
}  # fmt: skip
TINY_VAE = {"base_dim": 8, "z_dim": 16}
NAMES = {
    "transformer": "diffusion_models/comfyd-tiny-qwen-image.safetensors",
    "qwen25_7b": "text_encoders/comfyd-tiny-qwen25-vl.safetensors",
    "vae": "vae/comfyd-tiny-qwen-image-vae.safetensors",
}


def tiny_encoder_config() -> dict:
    t = TINY_QWEN25
    head = qwen25_encoder.TINY_HEAD_DIM
    shapes = {
        "model.embed_tokens.weight": (t["vocab_size"], t["hidden_size"]),
        "model.layers.0.self_attn.q_proj.weight": (t["heads"] * head, t["hidden_size"]),
        "model.layers.0.self_attn.k_proj.weight": (t["kv_heads"] * head, t["hidden_size"]),
        "model.layers.0.mlp.gate_proj.weight": (t["intermediate"], t["hidden_size"]),
        **{f"model.layers.{i}.input_layernorm.weight": (t["hidden_size"],) for i in range(t["layers"])},
    }
    return qwen25_encoder.infer_config(shapes)


def tiny_vision_config() -> dict:
    v = TINY_VISION
    shapes = {
        "visual.patch_embed.proj.weight": (v["hidden_size"], 3, 2, 14, 14),
        "visual.blocks.0.mlp.gate_proj.weight": (v["intermediate_size"], v["hidden_size"]),
        **{f"visual.blocks.{i}.norm1.weight": (v["hidden_size"],) for i in range(v["depth"])},
        "visual.merger.mlp.2.weight": (TINY_QWEN25["hidden_size"], 4 * v["hidden_size"]),
    }
    return qwen25_vision.infer_config(shapes)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_tiny_text_encoder(root: Path, seed: int = 0) -> Path:
    """The tiny Qwen2.5-VL file alone (language model and vision tower)."""
    from comfyd.models import tiny

    encoder = tiny.random_module(qwen25_encoder.empty_encoder(tiny_encoder_config()), seed, "qwen25-vl")
    state = {qwen25_encoder.original_name(k): v for k, v in encoder.state_dict().items()}
    tower = tiny.random_module(qwen25_vision.empty_tower(tiny_vision_config()), seed, "qwen25-vl-vision")
    state.update({qwen25_vision.original_name(k): v for k, v in tower.state_dict().items()})
    return _save(state, root / NAMES["qwen25_7b"])


def write_tiny_qwen_image(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny

    written: list[Path] = []
    net = tiny.random_module(transformer.empty_transformer(TINY_TRANSFORMER), seed, "qwen-image")
    written.append(_save(dict(net.state_dict()), root / NAMES["transformer"]))
    written.append(write_tiny_text_encoder(root, seed))
    vae = tiny.random_module(video_vae.empty_vae(TINY_VAE), seed, "qwen-image-vae")
    written.append(
        _save({video_vae.original_name(k): v for k, v in vae.state_dict().items()}, root / NAMES["vae"])
    )
    return written
