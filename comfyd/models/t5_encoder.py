"""T5 text encoders (T5-XXL of Flux / SD3): build from a file's shapes, tokenize and encode as
ComfyUI does.

Files: the transformers `T5EncoderModel` layout (`shared.weight` or `encoder.embed_tokens.weight`,
`encoder.block.N.layer.0.SelfAttention.q.weight`, ..., `encoder.final_layer_norm.weight`), with a
prefix in all-in-one checkpoints. The config is read from the shapes (width, layers, heads from the
relative-attention table, feed-forward width, gated activation), so a tiny test encoder and the
real 4096-wide one load through the same code.

Tokenization (ComfyUI's T5XXLTokenizer, an SDTokenizer without a start token): the prompt's weight
syntax is parsed, each segment is tokenized without its end token, everything stays in one
sequence (no 77-token chunks), the end token 1 closes it and pad token 0 fills it to `min_length`
(256 for Flux). Encoding: the last hidden state after the final layer norm, no attention mask
(pads are attended, as in ComfyUI's Flux); tokens weighted w != 1 become (z - z_empty) * w +
z_empty against the empty prompt [end, pad, ...] of the same length. There is no pooled output.
"""

from __future__ import annotations

import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfyd.models.prompt_weights import parse_prompt_weights
from comfyd.models.tokenizer_options import Padding, pad

TOKENIZER_DIR = Path(__file__).parent / "configs" / "t5_tokenizer"
END_TOKEN = 1
PAD_TOKEN = 0
FLUX_MIN_LENGTH = 256
_LOCK = threading.Lock()
_BLOCK = re.compile(r"encoder\.block\.(\d+)\.")
T5Tokens = list[tuple[int, float]]


@lru_cache(maxsize=1)
def shipped_tokenizer() -> Any:
    """The T5 SentencePiece tokenizer shipped in the package (Apache-2.0, see its LICENSE)."""
    from transformers import T5TokenizerFast

    return T5TokenizerFast.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


def tokenize(text: str, min_length: int = FLUX_MIN_LENGTH, min_padding: int = 0) -> T5Tokens:
    """(token id, weight) pairs of one prompt: segments, end token, `min_padding` pads, pads up
    to `min_length`."""
    tokenizer = shipped_tokenizer()
    tokens: T5Tokens = []
    for segment in parse_prompt_weights(text):
        if segment.text == "":
            continue
        with _LOCK:
            ids = tokenizer(segment.text, verbose=False)["input_ids"]
        tokens.extend((int(t), float(segment.weight)) for t in ids[:-1])
    tokens.append((END_TOKEN, 1.0))
    return pad(tokens, PAD_TOKEN, Padding(min_padding, min_length))


# --- files -----------------------------------------------------------------------------------
def find_prefix(keys: set[str]) -> str | None:
    """The prefix under which a T5 encoder is stored, or None when the keys hold none."""
    for key in keys:
        if key.endswith("encoder.final_layer_norm.weight") and "SelfAttention" not in key:
            prefix = key[: -len("encoder.final_layer_norm.weight")]
            if f"{prefix}encoder.block.0.layer.0.SelfAttention.q.weight" in keys:
                return prefix
    return None


def infer_config(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """transformers T5Config values for the encoder under `prefix`."""
    embed_key = next(
        (k for k in (f"{prefix}shared.weight", f"{prefix}encoder.embed_tokens.weight") if k in shapes), None
    )
    if embed_key is None:
        raise ValueError(f"T5 encoder under {prefix!r} has no token embedding (shared.weight)")
    vocab, d_model = shapes[embed_key]
    blocks = {int(m.group(1)) for k in shapes if (m := _BLOCK.match(k[len(prefix) :]))}
    attn = f"{prefix}encoder.block.0.layer.0.SelfAttention."
    buckets, heads = shapes[f"{attn}relative_attention_bias.weight"]
    inner = shapes[f"{attn}q.weight"][0]
    ff = f"{prefix}encoder.block.0.layer.1.DenseReluDense."
    gated = f"{ff}wi_0.weight" in shapes
    d_ff = shapes[f"{ff}wi_0.weight" if gated else f"{ff}wi.weight"][0]
    return {
        "vocab_size": vocab,
        "d_model": d_model,
        "d_kv": inner // heads,
        "d_ff": d_ff,
        "num_layers": len(blocks),
        "num_heads": heads,
        "relative_attention_num_buckets": buckets,
        "relative_attention_max_distance": 128,
        "is_gated_act": gated,
        "dense_act_fn": "gelu_pytorch_tanh" if gated else "relu",
        "feed_forward_proj": "gated-gelu" if gated else "relu",
        "layer_norm_epsilon": 1e-6,
        "dropout_rate": 0.0,
        "pad_token_id": PAD_TOKEN,
        "eos_token_id": END_TOKEN,
        "tie_word_embeddings": False,
    }


def empty_encoder(config: dict[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import T5Config, T5EncoderModel

    with init_empty_weights():
        return T5EncoderModel(T5Config(**config))


class T5Translator:
    """T5EncoderModel parameter names -> stored keys (the embedding under either of its names)."""

    def __init__(self, prefix: str, keys: set[str]) -> None:
        self.prefix = prefix
        self.embed = next(
            (k for k in (f"{prefix}shared.weight", f"{prefix}encoder.embed_tokens.weight") if k in keys),
            f"{prefix}shared.weight",
        )

    def source(self, name: str) -> Any:
        from comfyd.models.keymap import Source

        if name in ("shared.weight", "encoder.embed_tokens.weight"):
            return Source(self.embed)
        return Source(self.prefix + name)


def share_embedding(module: nn.Module) -> nn.Module:
    """One token embedding for `shared` and `encoder.embed_tokens` (both read from the same stored
    tensor, the encoder would hold it twice: 0.26 GB of T5-XXL in bf16). The module itself is
    shared, not its parameter, so moves between devices keep it one."""
    module.encoder.embed_tokens = module.shared
    return module


def apply_weight_scales(module: nn.Module, tf: Any, prefix: str) -> int:
    """ComfyUI's scaled-fp8 files (`t5xxl_fp8_e4m3fn_scaled`, a `scaled_fp8` marker): each linear
    weight is stored in fp8 beside a `scale_weight` scalar; the real weight is their product.
    Multiplies the loaded weights by their scales in place; returns how many were scaled."""
    keys = set(tf.keys())
    scaled = 0
    with torch.no_grad():
        for name, param in module.named_parameters():
            if not name.endswith(".weight") or name in ("shared.weight", "encoder.embed_tokens.weight"):
                continue
            scale_key = f"{prefix}{name[: -len('weight')]}scale_weight"
            if scale_key in keys:
                param.mul_(tf.get(scale_key).to(device=param.device, dtype=param.dtype))
                scaled += 1
    return scaled


# --- encoding --------------------------------------------------------------------------------
def attention_mask(ids: list[int], end_token: int = END_TOKEN) -> list[int]:
    """1 up to and including the first end token, 0 after it."""
    mask, ended = [], False
    for token in ids:
        mask.append(0 if ended else 1)
        ended = ended or token == end_token
    return mask


def encode(
    encoder: Any, tokens: T5Tokens, masked: bool = False, zero_masked: bool = True,
    end_token: int = END_TOKEN, pad_token: int = PAD_TOKEN, empty_end: bool = True,
) -> torch.Tensor:  # fmt: skip
    """[1, len(tokens), d_model] float32 on the CPU (see the module docstring). `masked` (UMT5 as
    Wan drives it): the padding after the end token is masked out of attention and zeroed
    (LTX-Video's T5, `zero_masked=False`: masked, not zeroed). `empty_end` False: the empty
    prompt of weighted tokens is pad tokens only (Chroma's PixArt T5)."""
    device = next(encoder.parameters()).device
    ids = [t for t, _ in tokens]
    weights = [w for _, w in tokens]
    weighted = any(w != 1.0 for w in weights)
    batch = [ids]
    if weighted:
        batch.append(([end_token] if empty_end else [pad_token]) + [pad_token] * (len(ids) - 1))
    mask = torch.tensor([attention_mask(row, end_token) for row in batch], dtype=torch.long, device=device) if masked else None
    with torch.no_grad():
        hidden = encoder(
            input_ids=torch.tensor(batch, dtype=torch.long, device=device), attention_mask=mask
        ).last_hidden_state
    hidden = hidden.float()
    if mask is not None and zero_masked:
        hidden = hidden * mask.unsqueeze(-1).float()
    z = hidden[0]
    if weighted:
        empty = hidden[1]
        w = torch.tensor(weights, dtype=z.dtype, device=z.device).unsqueeze(-1)
        changed = torch.tensor([x != 1.0 for x in weights], device=z.device).unsqueeze(-1)
        z = torch.where(changed, (z - empty) * w + empty, z)
    return z.unsqueeze(0).cpu()
