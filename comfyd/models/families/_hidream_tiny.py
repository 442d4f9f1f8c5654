"""Tiny random-weight HiDream-I1 files in ComfyUI's split layout (tests, demo; `comfyd models
make-tiny --family hidream`): a transformer in `diffusion_models/` (ComfyUI's keys: one double and
one single block of two 128-wide heads, four experts with two active, as ComfyUI builds them), CLIP-L
(with its text projection: HiDream pools it projected), CLIP-G (32 layers, so the CLIP-G rule
holds), T5 and Llama encoders in `text_encoders/` (transformers keys, the Llama under `model.`),
the small Llama-3-style BPE tokenizer of the HunyuanVideo tiny files in
`text_encoders/llama_tokenizer/` and a 16-channel autoencoder in `vae/` (Flux's layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfyd.models import llama_encoder, t5_encoder
from comfyd.models.families import _hidream_transformer as transformer
from comfyd.models.families._flux_tiny import write_tiny_vae
from comfyd.models.families._hunyuan_tiny import TINY_LLAMA, tiny_tokenizer
from comfyd.models.families._sd3_tiny import TINY_T5, tiny_clip_configs
from comfyd.models.keymap import to_original

NAMES = {
    "transformer": "diffusion_models/comfyd-tiny-hidream-i1.safetensors",
    "clip_l": "text_encoders/comfyd-tiny-hidream-clip-l.safetensors",
    "clip_g": "text_encoders/comfyd-tiny-hidream-clip-g.safetensors",
    "t5xxl": "text_encoders/comfyd-tiny-hidream-t5xxl.safetensors",
    "llama": "text_encoders/comfyd-tiny-hidream-llama-3.1.safetensors",
    "tokenizer": f"text_encoders/{llama_encoder.TOKENIZER_FOLDER}/tokenizer.json",
    "vae": "vae/comfyd-tiny-hidream-ae.safetensors",
}


def tiny_transformer_config(t5_dim: int, llama_dim: int, pooled_dim: int) -> dict[str, Any]:
    blocks = 2
    return {
        "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 1, "num_single_layers": 1,
        "attention_head_dim": transformer.HEAD_DIM, "num_attention_heads": 2,
        "caption_channels": [t5_dim, llama_dim], "text_emb_dim": pooled_dim, "num_routed_experts": 4,
        "num_activated_experts": transformer.ACTIVE_EXPERTS, "axes_dims_rope": list(transformer.AXES_DIMS_ROPE),
        "max_resolution": [128, 128],
        "llama_layers": [min(i, transformer.LLAMA_LAYERS - 1) for i in range(blocks)],
    }  # fmt: skip


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _clip_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in module.state_dict().items() if not k.endswith("position_ids")}


def write_tiny_hidream(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny
    from comfyd.models.loader import empty_text_encoder

    written: list[Path] = []
    clip_l_config, clip_g_config = tiny_clip_configs()
    clip_l = tiny.random_module(empty_text_encoder(clip_l_config), seed, "hidream-clip-l")
    written.append(_save(_clip_state(clip_l), root / NAMES["clip_l"]))
    clip_g = tiny.random_module(empty_text_encoder(clip_g_config), seed, "hidream-clip-g")
    written.append(_save(_clip_state(clip_g), root / NAMES["clip_g"]))
    t5 = tiny.random_module(t5_encoder.empty_encoder(TINY_T5), seed, "hidream-t5xxl")
    t5_state = {k: v for k, v in t5.state_dict().items() if k != "encoder.embed_tokens.weight"}
    written.append(_save(t5_state, root / NAMES["t5xxl"]))

    tokenizer = tiny_tokenizer()
    path = root / NAMES["tokenizer"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    written.append(path)
    llama_config = {**TINY_LLAMA, "vocab_size": tokenizer.get_vocab_size()}
    llama = tiny.random_module(llama_encoder.empty_encoder(llama_config), seed, "hidream-llama")
    written.append(_save({f"model.{k}": v for k, v in llama.state_dict().items()}, root / NAMES["llama"]))

    pooled_dim = int(clip_l_config["projection_dim"]) + int(clip_g_config["projection_dim"])
    config = tiny_transformer_config(TINY_T5["d_model"], TINY_LLAMA["hidden_size"], pooled_dim)
    net = tiny.random_module(transformer.empty_transformer(config), seed, "hidream-i1")
    stored = to_original(net.state_dict(), transformer.HiDreamTranslator(""))
    written.append(_save(stored, root / NAMES["transformer"]))
    written.append(write_tiny_vae(root / NAMES["vae"], seed))
    return written
