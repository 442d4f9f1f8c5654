"""Tiny random-weight AuraFlow files (tests, demo; `comfyd models make-tiny --family auraflow`): one
all-in-one checkpoint in `checkpoints/` with ComfyUI's prefixes: an MMDiT in fal's layout (96 wide,
12 heads of 8 as ComfyUI builds it, one double and one single block, a 16x16 position grid), a
Pile-T5-shaped encoder (a relative-attention table per block, 32 wide) carrying a tiny SentencePiece
model with Pile-T5's special ids (unknown 0, pad/begin 1, end 2) as `spiece_model`, and a 4-channel
SDXL-style autoencoder (LDM keys) under `vae.`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfyd.models import umt5_encoder
from comfyd.models.families import _auraflow_transformer as transformer
from comfyd.models.families._wan_tiny import _CORPUS
from comfyd.models.keymap import to_original, vae_translator

TINY_PILE_T5 = {
    "vocab_size": 256, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4,
    "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "dense_act_fn": "gelu_pytorch_tanh", "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6,
    "dropout_rate": 0.0, "pad_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False,
    "is_encoder_decoder": False, "scalable_attention": False,
}  # fmt: skip
TINY_TRANSFORMER = {
    "sample_size": 32, "patch_size": 2, "in_channels": 4, "num_mmdit_layers": 1, "num_single_dit_layers": 1,
    "attention_head_dim": 8, "num_attention_heads": transformer.HEADS,
    "joint_attention_dim": TINY_PILE_T5["d_model"], "caption_projection_dim": 8 * transformer.HEADS,
    "out_channels": 4, "pos_embed_max_size": 256,
}  # fmt: skip
NAMES = {"checkpoint": "checkpoints/comfyd-tiny-auraflow.safetensors"}
ENCODER_PREFIX = "text_encoders.pile_t5xl.transformer."


def tiny_spiece_model() -> bytes:
    """A unigram SentencePiece model with Pile-T5's special ids (unknown 0, begin 1, end 2)."""
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS * 4), model_writer=out, vocab_size=TINY_PILE_T5["vocab_size"],
        model_type="unigram", unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1,
        hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
    )  # fmt: skip
    return out.getvalue()


def tiny_vae_config() -> dict[str, Any]:
    from comfyd.models import tiny

    return dict(tiny.tiny_configs(tiny.families.DEFAULT_FAMILY).vae)


def write_tiny_auraflow(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny
    from comfyd.models.loader import empty_vae

    state: dict[str, torch.Tensor] = {}
    net = tiny.random_module(transformer.empty_transformer(TINY_TRANSFORMER), seed, "auraflow-mmdit")
    stored = to_original(net.state_dict(), transformer.AuraFlowTranslator(TINY_TRANSFORMER, ""))
    state.update({f"model.diffusion_model.{k}": v for k, v in stored.items()})
    encoder = tiny.random_module(umt5_encoder.empty_encoder(TINY_PILE_T5), seed, "auraflow-pile-t5")
    state.update(
        {ENCODER_PREFIX + k: v for k, v in encoder.state_dict().items() if k != "encoder.embed_tokens.weight"}
    )
    spiece = torch.frombuffer(bytearray(tiny_spiece_model()), dtype=torch.uint8)
    state[ENCODER_PREFIX + umt5_encoder.SPIECE_KEY] = spiece
    vae_config = tiny_vae_config()
    vae = tiny.random_module(empty_vae(vae_config), seed, "auraflow-vae")
    state.update(
        {f"vae.{k}": v for k, v in to_original(vae.state_dict(), vae_translator(vae_config, "")).items()}
    )
    path = root / NAMES["checkpoint"]
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return [path]
