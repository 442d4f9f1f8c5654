"""Tiny random-weight Flux files in ComfyUI's split layout (tests, demo; `comfyd models make-tiny
--family flux`): a dev, a schnell and a Fill transformer in `diffusion_models/` (BFL keys), a CLIP-L and a
T5 encoder in `text_encoders/` (transformers keys), a 16-channel autoencoder in `vae/` (LDM keys),
and the dev parts again as one all-in-one checkpoint in `checkpoints/` (ComfyUI's prefixes).
Same seeds, same files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from comfyd.models import t5_encoder
from comfyd.models.families import _flux_transformer as transformer
from comfyd.models.keymap import to_original, vae_translator

TINY_T5 = {
    "vocab_size": 32128, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128, "is_gated_act": True,
    "dense_act_fn": "gelu_pytorch_tanh", "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
}  # fmt: skip
NAMES = {
    "dev": "diffusion_models/comfyd-tiny-flux-dev.safetensors",
    "schnell": "diffusion_models/comfyd-tiny-flux-schnell.safetensors",
    "fill": "diffusion_models/comfyd-tiny-flux-fill.safetensors",
    "clip_l": "text_encoders/comfyd-tiny-clip-l.safetensors",
    "t5xxl": "text_encoders/comfyd-tiny-t5xxl.safetensors",
    "vae": "vae/comfyd-tiny-flux-ae.safetensors",
    "checkpoint": "checkpoints/comfyd-tiny-flux-dev-all-in-one.safetensors",
}
# Where ComfyUI's all-in-one Flux checkpoints keep each part.
CHECKPOINT_PREFIXES = {
    "dev": "model.diffusion_model.",
    "clip_l": "text_encoders.clip_l.transformer.",
    "t5xxl": "text_encoders.t5xxl.transformer.",
    "vae": "vae.",
}


# Fill's transformer takes the latent, the masked-image latent and the 8x8-folded mask (16 + 16 + 64
# channels per latent cell, x4 per 2x2 patch); dev and schnell the latent alone.
IN_CHANNELS = {"dev": 64, "schnell": 64, "fill": 384}


def tiny_transformer_config(guidance: bool, context_dim: int, pooled_dim: int, in_channels: int = 64) -> dict[str, Any]:
    return {
        "patch_size": 1, "in_channels": in_channels, "out_channels": 64, "num_layers": 1, "num_single_layers": 2,
        "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": context_dim,
        "pooled_projection_dim": pooled_dim, "guidance_embeds": guidance,
        "axes_dims_rope": list(transformer.rope_axes(32)),
    }  # fmt: skip


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_tiny_t5(path: Path, seed: int = 0) -> Path:
    """A tiny T5 encoder in the transformers layout of ComfyUI's t5xxl files."""
    from comfyd.models import tiny

    t5 = tiny.random_module(t5_encoder.empty_encoder(TINY_T5), seed, "flux-t5xxl")
    return _save({k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}, path)


def write_tiny_vae(path: Path, seed: int = 0) -> Path:
    """A tiny 16-channel autoencoder in the LDM layout of Flux's ae.safetensors."""
    from comfyd.models import tiny
    from comfyd.models.loader import empty_vae

    vae_config = dict(tiny.tiny_configs(tiny.families.DEFAULT_FAMILY).vae, latent_channels=16,
                      use_quant_conv=False, use_post_quant_conv=False)  # fmt: skip
    vae = tiny.random_module(empty_vae(vae_config), seed, "flux-vae")
    return _save(to_original(vae.state_dict(), vae_translator(vae_config, "")), path)


def write_tiny_flux(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny
    from comfyd.models.loader import empty_text_encoder

    sd1 = tiny.tiny_configs(tiny.families.DEFAULT_FAMILY)
    clip_config = sd1.encoders["l"]
    written: list[Path] = []
    for variant, guidance in (("dev", True), ("schnell", False), ("fill", True)):
        config = tiny_transformer_config(
            guidance, TINY_T5["d_model"], int(clip_config["hidden_size"]), IN_CHANNELS[variant]
        )
        net = tiny.random_module(transformer.empty_transformer(config), seed, f"flux-{variant}")
        stored = to_original(net.state_dict(), transformer.FluxTranslator(config, ""))
        written.append(_save(stored, root / NAMES[variant]))
    clip = tiny.random_module(empty_text_encoder(clip_config), seed, "flux-clip-l")
    clip_state = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    written.append(_save(clip_state, root / NAMES["clip_l"]))
    written.append(write_tiny_t5(root / NAMES["t5xxl"], seed))
    written.append(write_tiny_vae(root / NAMES["vae"], seed))
    combined: dict[str, torch.Tensor] = {}
    for part, prefix in CHECKPOINT_PREFIXES.items():
        combined.update({prefix + k: v for k, v in load_file(str(root / NAMES[part])).items()})
    written.append(_save(combined, root / NAMES["checkpoint"]))
    return written
