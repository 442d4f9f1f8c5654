"""Tiny random-weight HunyuanVideo files in ComfyUI's split layout (tests, demo; `comfyd models
make-tiny --family hunyuan-video`): a transformer in `diffusion_models/` (ComfyUI's keys), a CLIP-L
and a Llama text encoder in `text_encoders/` (transformers keys, the Llama under `model.`), a
byte-level BPE tokenizer in `text_encoders/llama_tokenizer/tokenizer.json` and a causal video VAE
in `vae/` (hunyuan_video_vae_bf16 keys).

The transformer keeps HunyuanVideo's 128-wide heads (ComfyUI derives heads and rotary axes from
them) at two heads, one double and one single block; the Llama keeps 128-wide heads at two heads
and four layers (the encoder output is the third-last layer's); the VAE keeps its four levels at
widths 32-64. The tokenizer is a small BPE trained here, deterministically, on a few sentences and
ComfyUI's prompt template, with Llama 3's special tokens: real installs use Llama 3's tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from comfyd.models import llama_encoder
from comfyd.models.families import _hunyuan_transformer as transformer
from comfyd.models.families import _hunyuan_vae as video_vae
from comfyd.models.keymap import to_original

SPECIAL_TOKENS = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
    "<|finetune_right_pad_id|>",
)  # fmt: skip
# Llama 3's pre-tokenizer split (a blank line "\n\n" is one piece, as in the real vocabulary).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_CORPUS = (
    "a small red fox runs across a snowy field at dawn",
    "waves roll onto a quiet beach under a grey sky",
    "a cat sleeps on a warm windowsill in the afternoon sun",
    "city lights shimmer on a rainy street at night",
    "an astronaut walks on the moon, cinematic, high detail",
    "system",
    "user",
    "\n\n",
)
TINY_LLAMA = {
    "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 2,
    "num_key_value_heads": 1, "head_dim": 128, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "max_position_embeddings": 8192, "attention_bias": False, "mlp_bias": False,
    "tie_word_embeddings": False, "hidden_act": "silu",
}  # fmt: skip
TINY_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": video_vae.LATENT_CHANNELS,
    "down_block_types": ["HunyuanVideoDownBlock3D"] * 4, "up_block_types": ["HunyuanVideoUpBlock3D"] * 4,
    "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "norm_num_groups": 32,
    "spatial_compression_ratio": 8, "temporal_compression_ratio": 4, "mid_block_add_attention": True,
}  # fmt: skip
NAMES = {
    "t2v": "diffusion_models/comfyd-tiny-hunyuan-video.safetensors",
    "clip_l": "text_encoders/comfyd-tiny-hunyuan-clip-l.safetensors",
    "llama": "text_encoders/comfyd-tiny-llava-llama3.safetensors",
    "tokenizer": f"text_encoders/{llama_encoder.TOKENIZER_FOLDER}/tokenizer.json",
    "vae": "vae/comfyd-tiny-hunyuan-video-vae.safetensors",
}
# The VAE's middle attention is a 1x1x1 Conv3d in the stored layout.
_ATTENTION_CONVS = (".mid.attn_1.q.weight", ".mid.attn_1.k.weight", ".mid.attn_1.v.weight", ".mid.attn_1.proj_out.weight")


def tiny_transformer_config(text_dim: int, pooled_dim: int) -> dict[str, Any]:
    return {
        "in_channels": 16, "out_channels": 16, "num_attention_heads": 2, "attention_head_dim": 128,
        "num_layers": 1, "num_single_layers": 1, "num_refiner_layers": 2, "mlp_ratio": 4.0,
        "patch_size": 2, "patch_size_t": 1, "qk_norm": "rms_norm", "guidance_embeds": True,
        "text_embed_dim": text_dim, "pooled_projection_dim": pooled_dim, "rope_theta": 256.0,
        "rope_axes_dim": [16, 56, 56],
    }  # fmt: skip


def tiny_tokenizer() -> Any:
    """A byte-level BPE with Llama 3's special tokens (deterministic: the same corpus, one thread)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])  # fmt: skip
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    template = llama_encoder.TEMPLATE.format(" ".join(_CORPUS))
    for special in SPECIAL_TOKENS:
        template = template.replace(special, " ")
    tokenizer.train_from_iterator(list(_CORPUS * 8) + [template] * 4, trainer=trainer)
    # Llama 3's tokenizer.json adds the begin token in its post-processor, as here.
    begin = llama_encoder.BEGIN
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{begin} $A", pair=f"{begin} $A {begin} $B", special_tokens=[(begin, tokenizer.token_to_id(begin))]
    )
    return tokenizer


def _save(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
    return path


def write_tiny_hunyuan_video(root: Path, seed: int = 0) -> list[Path]:
    from comfyd.models import tiny
    from comfyd.models.loader import empty_text_encoder

    written: list[Path] = []
    tokenizer = tiny_tokenizer()
    for needed in (llama_encoder.USER, llama_encoder.BLANK_LINE):
        if tokenizer.token_to_id(needed) is None:
            raise RuntimeError(f"the tiny Llama tokenizer lacks {needed!r}")
    path = root / NAMES["tokenizer"]
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    llama_config = {**TINY_LLAMA, "vocab_size": tokenizer.get_vocab_size()}
    llama = tiny.random_module(llama_encoder.empty_encoder(llama_config), seed, "hunyuan-llama")
    written.append(_save({f"model.{k}": v for k, v in llama.state_dict().items()}, root / NAMES["llama"]))
    written.append(path)
    clip_config = tiny.tiny_configs(tiny.families.DEFAULT_FAMILY).encoders["l"]
    clip = tiny.random_module(empty_text_encoder(clip_config), seed, "hunyuan-clip-l")
    clip_state = {k: v for k, v in clip.state_dict().items() if not k.endswith("position_ids")}
    written.append(_save(clip_state, root / NAMES["clip_l"]))
    config = tiny_transformer_config(TINY_LLAMA["hidden_size"], int(clip_config["hidden_size"]))
    net = tiny.random_module(transformer.empty_transformer(config), seed, "hunyuan-video")
    stored = to_original(net.state_dict(), transformer.HunyuanTranslator(config, [], ""))
    written.append(_save(stored, root / NAMES["t2v"]))
    vae = tiny.random_module(video_vae.empty_vae(TINY_VAE), seed, "hunyuan-video-vae")
    vae_state = to_original(vae.state_dict(), video_vae.translator(TINY_VAE, ""))
    for key in [k for k in vae_state if k.endswith(_ATTENTION_CONVS)]:
        vae_state[key] = vae_state[key].reshape(*vae_state[key].shape[:2], 1, 1, 1)
    written.append(_save(vae_state, root / NAMES["vae"]))
    return written
