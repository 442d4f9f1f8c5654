"""Tiny random-weight Wan 2.1 files in ComfyUI's split layout (tests, demo; `comfyd models
make-tiny --family wan`): a text-to-video and an image-to-video transformer (36 input channels, no
CLIP-vision embedder) in `diffusion_models/` (the original keys),
a UMT5 encoder in `text_encoders/` (transformers keys plus the `spiece_model` tensor ComfyUI reads
its tokenizer from) and a video VAE in `vae/` (the wan_2.1_vae keys). The transformer keeps
Wan's 128-wide heads (ComfyUI derives the head count from the width) at two heads and two blocks;
the VAE keeps its fixed structure at base width 8. The SentencePiece model is a small one trained
here, deterministically, on a few sentences: real files carry the 256k-piece UMT5 vocabulary.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfyd.models import umt5_encoder
from comfyd.models.families import _wan_transformer as transformer
from comfyd.models.families import _wan_vae as video_vae

TINY_UMT5 = {
    "vocab_size": 256, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "dense_act_fn": "gelu_new", "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False,
    "is_encoder_decoder": False, "scalable_attention": False,
}  # fmt: skip
TINY_TRANSFORMER = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": transformer.HEAD_DIM,
    "in_channels": 16, "out_channels": 16, "text_dim": TINY_UMT5["d_model"], "freq_dim": 256,
    "ffn_dim": 512, "num_layers": 2, "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6, "image_dim": None, "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
}  # fmt: skip
# Image-to-video: 16 latent + 4 mask + 16 start-image channels in, no CLIP-vision embedder.
TINY_I2V_TRANSFORMER = {**TINY_TRANSFORMER, "in_channels": 36}
TINY_VAE = {"base_dim": 8, "z_dim": 16}
NAMES = {
    "t2v": "diffusion_models/comfyd-tiny-wan-t2v.safetensors",
    "i2v": "diffusion_models/comfyd-tiny-wan-i2v.safetensors",
    "umt5xxl": "text_encoders/comfyd-tiny-umt5xxl.safetensors",
    "vae": "vae/comfyd-tiny-wan-vae.safetensors",
}
_CORPUS = (
    "a small red fox runs across a snowy field at dawn",
    "waves roll onto a quiet beach under a grey sky",
    "a cat sleeps on a warm windowsill in the afternoon sun",
    "city lights shimmer on a rainy street at night",
    "a hot air balloon drifts over green hills and a river",
    "slow motion video of leaves falling in an autumn forest",
    "an astronaut walks on the moon, cinematic, high detail",
)


def tiny_spiece_model() -> bytes:
    """A unigram SentencePiece model of at most 256 pieces with T5's special ids (pad 0, end 1, unknown 2)."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=out, vocab_size=TINY_UMT5["vocab_size"],
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, num_threads=1,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    return out.getvalue()


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def _stored(net: Any, original_name: Any) -> dict[str, torch.Tensor]:
    return {original_name(k): v for k, v in net.state_dict().items()}


def write_tiny_wan(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny

    written: list[Path] = []
    net = tiny.random_module(transformer.empty_transformer(TINY_TRANSFORMER), seed, "wan-t2v")
    written.append(_save(_stored(net, transformer.original_name), root / NAMES["t2v"]))
    net = tiny.random_module(transformer.empty_transformer(TINY_I2V_TRANSFORMER), seed, "wan-i2v")
    written.append(_save(_stored(net, transformer.original_name), root / NAMES["i2v"]))
    encoder = tiny.random_module(umt5_encoder.empty_encoder(TINY_UMT5), seed, "wan-umt5xxl")
    state = {k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    state[umt5_encoder.SPIECE_KEY] = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    written.append(_save(state, root / NAMES["umt5xxl"]))
    vae = tiny.random_module(video_vae.empty_vae(TINY_VAE), seed, "wan-vae")
    written.append(_save(_stored(vae, video_vae.original_name), root / NAMES["vae"]))
    return written
