"""Tiny random-weight Chroma files in ComfyUI's split layout (tests; `comfyd models make-tiny
--family chroma`): the transformer in `diffusion_models/`, Flux's tiny T5 and 16-channel autoencoder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from comfyd.models.families import _chroma_transformer as transformer
from comfyd.models.families._flux_tiny import TINY_T5, _save, write_tiny_t5, write_tiny_vae
from comfyd.models.keymap import to_original

NAMES = {
    "transformer": "diffusion_models/comfyd-tiny-chroma.safetensors",
    "t5xxl": "text_encoders/comfyd-tiny-t5xxl.safetensors",
    "vae": "vae/comfyd-tiny-flux-ae.safetensors",
}


def tiny_transformer_config() -> dict[str, Any]:
    return {
        "patch_size": 1, "in_channels": 64, "out_channels": 64, "num_layers": 1, "num_single_layers": 2,
        "attention_head_dim": 32, "num_attention_heads": 2, "joint_attention_dim": TINY_T5["d_model"],
        "axes_dims_rope": list(transformer.rope_axes(32)), "approximator_num_channels": 64,
        "approximator_hidden_dim": 96, "approximator_layers": 2,
    }  # fmt: skip


def write_tiny_chroma(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny

    config = tiny_transformer_config()
    net = tiny.random_module(transformer.empty_transformer(config), seed, "chroma")
    stored = to_original(net.state_dict(), transformer.ChromaTranslator(config, ""))
    return [
        _save(stored, root / NAMES["transformer"]),
        write_tiny_t5(root / NAMES["t5xxl"], seed),
        write_tiny_vae(root / NAMES["vae"], seed),
    ]
