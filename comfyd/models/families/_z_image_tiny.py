"""Tiny random-weight Z-Image files in ComfyUI's split layout (tests, demo; `comfyd models make-tiny
--family z-image`): a transformer in `diffusion_models/` (the original release's keys, as ComfyUI's
files store them; 96 wide, three 32-wide heads, one refiner layer each side, two main layers), a
Qwen3 model in `text_encoders/` (the `model.*` keys; two layers, 32 wide, 8-wide heads, Qwen2's
full 151,936-row vocabulary so the shipped tokenizer's ids fit) and a 16-channel autoencoder in
`vae/` (LDM keys, Flux's `ae.safetensors` layout).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from comfyd.models import qwen3_encoder
from comfyd.models.families import _z_image_transformer as transformer
from comfyd.models.keymap import to_original, vae_translator

TINY_QWEN3 = {
    "vocab_size": 151936, "hidden_size": 32, "head_dim": 8, "layers": 2, "heads": 4, "kv_heads": 2,
    "intermediate": 64,
}  # fmt: skip
TINY_TRANSFORMER = {
    "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 96, "n_layers": 2,
    "n_refiner_layers": 1, "n_heads": 3, "n_kv_heads": 3, "norm_eps": 1e-5, "qk_norm": True,
    "cap_feat_dim": TINY_QWEN3["hidden_size"], "rope_theta": 256.0, "t_scale": 1000.0,
    "axes_dims": transformer.rope_axes(32), "axes_lens": [1536, 512, 512],
}  # fmt: skip
NAMES = {
    "transformer": "diffusion_models/comfyd-tiny-z-image-turbo.safetensors",
    "qwen3_4b": "text_encoders/comfyd-tiny-qwen3-4b.safetensors",
    "vae": "vae/comfyd-tiny-z-image-ae.safetensors",
}


def tiny_encoder_config() -> dict:
    t = TINY_QWEN3
    head = t["head_dim"]
    shapes = {
        "model.embed_tokens.weight": (t["vocab_size"], t["hidden_size"]),
        qwen3_encoder.MARKER: (head,),
        "model.layers.0.self_attn.q_proj.weight": (t["heads"] * head, t["hidden_size"]),
        "model.layers.0.self_attn.k_proj.weight": (t["kv_heads"] * head, t["hidden_size"]),
        "model.layers.0.mlp.gate_proj.weight": (t["intermediate"], t["hidden_size"]),
        **{f"model.layers.{i}.input_layernorm.weight": (t["hidden_size"],) for i in range(t["layers"])},
    }
    return qwen3_encoder.infer_config(shapes)


def tiny_vae_config() -> dict:
    from comfyd.models import tiny

    sd1 = tiny.tiny_configs(tiny.families.DEFAULT_FAMILY)
    return dict(sd1.vae, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_tiny_z_image(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny
    from comfyd.models.loader import empty_vae

    written: list[Path] = []
    net = tiny.random_module(transformer.empty_transformer(TINY_TRANSFORMER), seed, "z-image")
    written.append(_save(transformer.original_state(net.state_dict(), TINY_TRANSFORMER), root / NAMES["transformer"]))
    encoder = tiny.random_module(qwen3_encoder.empty_encoder(tiny_encoder_config()), seed, "qwen3-4b")
    written.append(
        _save({f"model.{k}": v for k, v in encoder.state_dict().items()}, root / NAMES["qwen3_4b"])
    )
    vae_config = tiny_vae_config()
    vae = tiny.random_module(empty_vae(vae_config), seed, "z-image-vae")
    written.append(_save(to_original(vae.state_dict(), vae_translator(vae_config, "")), root / NAMES["vae"]))
    return written
