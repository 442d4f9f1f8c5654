"""Tiny random-weight SD3.5 files in ComfyUI's layouts (tests, demo; `comfyd models make-tiny
--family sd3`): an SD3.5-medium-like MMDiT (RMS q/k norms, one dual-attention block; 128 wide,
two blocks of two 64-wide heads, as ComfyUI's detection builds it) in `diffusion_models/`, CLIP-L,
CLIP-G (32 layers, so ComfyUI's and comfyd's rule calls it G) and T5 encoders in `text_encoders/`
(transformers keys; CLIP-L carries an identity text projection, see sd3_reference), a 16-channel
autoencoder in `vae/`, and all of it again as one all-in-one checkpoint in `checkpoints/`
(ComfyUI's prefixes). Same seeds, same files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from comfyd.models import t5_encoder
from comfyd.models.families import _sd3_transformer as transformer
from comfyd.models.keymap import to_original, vae_translator

TINY_T5 = {
    "vocab_size": 32128, "d_model": 128, "d_kv": 32, "d_ff": 256, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "is_gated_act": True,
    "dense_act_fn": "gelu_pytorch_tanh", "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip
CLIP_G_WIDTH, CLIP_G_LAYERS = 64, 32
NAMES = {
    "transformer": "diffusion_models/comfyd-tiny-sd3.5-medium.safetensors",
    "clip_l": "text_encoders/comfyd-tiny-sd3-clip-l.safetensors",
    "clip_g": "text_encoders/comfyd-tiny-sd3-clip-g.safetensors",
    "t5xxl": "text_encoders/comfyd-tiny-sd3-t5xxl.safetensors",
    "vae": "vae/comfyd-tiny-sd3-vae.safetensors",
    "checkpoint": "checkpoints/comfyd-tiny-sd3.5-medium-all-in-one.safetensors",
}
# Where ComfyUI's all-in-one SD3 checkpoints keep each part.
CHECKPOINT_PREFIXES = {
    "transformer": "model.diffusion_model.",
    "clip_l": "text_encoders.clip_l.transformer.",
    "clip_g": "text_encoders.clip_g.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
    "vae": "first_stage_model.",
}


def tiny_transformer_config(context_dim: int, pooled_dim: int) -> dict[str, Any]:
    return {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 2,
        "attention_head_dim": transformer.HEAD_WIDTH, "num_attention_heads": 2,
        "joint_attention_dim": context_dim, "caption_projection_dim": 2 * transformer.HEAD_WIDTH,
        "pooled_projection_dim": pooled_dim, "out_channels": 16, "pos_embed_max_size": 16,
        "dual_attention_layers": (0,), "qk_norm": "rms_norm",
    }  # fmt: skip


def tiny_clip_configs() -> tuple[dict[str, Any], dict[str, Any]]:
    """(CLIP-L, CLIP-G) transformers configs of the tiny encoders."""
    from comfyd.models import detect, tiny

    clip_l = dict(tiny.tiny_configs(tiny.families.DEFAULT_FAMILY).encoders["l"])
    clip_l.update(architectures=["CLIPTextModelWithProjection"], projection_dim=int(clip_l["hidden_size"]))
    clip_g = dict(detect.shipped_config("sdxl", "text_encoder_g.json"))
    clip_g.update(
        hidden_size=CLIP_G_WIDTH, intermediate_size=2 * CLIP_G_WIDTH, num_hidden_layers=CLIP_G_LAYERS,
        num_attention_heads=detect.text_encoder_heads(CLIP_G_WIDTH), projection_dim=CLIP_G_WIDTH,
    )  # fmt: skip
    return clip_l, clip_g


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _clip_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def write_tiny_sd3(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny
    from comfyd.models.loader import empty_text_encoder, empty_vae

    clip_l_config, clip_g_config = tiny_clip_configs()
    written: list[Path] = []
    pooled_dim = int(clip_l_config["hidden_size"]) + CLIP_G_WIDTH
    config = tiny_transformer_config(TINY_T5["d_model"], pooled_dim)
    net = tiny.random_module(transformer.empty_transformer(config), seed, "sd3-mmdit")
    stored = to_original(net.state_dict(), transformer.SD3Translator(config, ""))
    written.append(_save(stored, root / NAMES["transformer"]))

    clip_l = tiny.random_module(empty_text_encoder(clip_l_config), seed, "sd3-clip-l")
    with torch.no_grad():  # ComfyUI pools CLIP-L unprojected; diffusers projects: make them agree
        clip_l.text_projection.weight.copy_(torch.eye(int(clip_l_config["hidden_size"])))
    written.append(_save(_clip_state(clip_l), root / NAMES["clip_l"]))
    clip_g = tiny.random_module(empty_text_encoder(clip_g_config), seed, "sd3-clip-g")
    written.append(_save(_clip_state(clip_g), root / NAMES["clip_g"]))
    t5 = tiny.random_module(t5_encoder.empty_encoder(TINY_T5), seed, "sd3-t5xxl")
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    written.append(_save(t5_state, root / NAMES["t5xxl"]))

    sd1 = tiny.tiny_configs(tiny.families.DEFAULT_FAMILY)
    vae_config = dict(sd1.vae, latent_channels=16, use_quant_conv=False, use_post_quant_conv=False)
    vae = tiny.random_module(empty_vae(vae_config), seed, "sd3-vae")
    written.append(_save(to_original(vae.state_dict(), vae_translator(vae_config, "")), root / NAMES["vae"]))

    combined: dict[str, torch.Tensor] = {}
    for part, prefix in CHECKPOINT_PREFIXES.items():
        combined.update({prefix + k: v for k, v in load_file(str(root / NAMES[part])).items()})
    written.append(_save(combined, root / NAMES["checkpoint"]))
    return written
