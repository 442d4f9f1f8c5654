"""Qwen3-4B as Z-Image's text encoder (CLIPLoader type "lumina2"): build it from a file's shapes,
tokenize and encode as the ComfyUI release that added Z-Image does (its text_encoders/z_image.py).

Files (qwen_3_4b*.safetensors): transformers' Qwen3 names, `model.embed_tokens`,
`model.layers.N.{self_attn.{q,k,v,o}_proj, self_attn.{q,k}_norm, mlp.{gate,up,down}_proj,
input_layernorm, post_attention_layernorm}`, `model.norm` (and possibly `lm_head`, unused). The
per-head q/k norms tell the file from a Qwen2.5 (biased q/k/v) or a Llama; their width is the
head width, so every size is read from the shapes (ComfyUI fixes the 4B's: 2560 wide, 36 layers,
32 heads of 128, 8 key/value heads). Built as transformers' `Qwen3Model`.

Tokenizer: Qwen2's byte-level BPE vocabulary, the same file Qwen-Image ships
(`qwen25_encoder.shipped_tokenizer`).

Prompt: the text goes into the chat template `<|im_start|>user\\n{}<|im_end|>\\n<|im_start|>
assistant\\n` (no system turn, no thinking block), weights are not parsed, the whole string is
tokenized at once without start, end or padding tokens. The encoder runs causally over all of it
and the output of the second-to-last layer, before any final norm, is the conditioning, every token
kept. diffusers' ZImagePipeline computes the same (`hidden_states[-2]`, masked to the real tokens).
CLIPSetLastLayer picks another layer, as in ComfyUI (-1: the last layer, still unnormalised).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
ROPE_THETA = 1_000_000.0
MARKER = "model.layers.0.self_attn.q_norm.weight"
DEFAULT_LAYER = -2  # ComfyUI's Qwen3_4BModel: the hidden layer before the last
_LOCK = threading.Lock()


def is_qwen3(keys: set[str], prefix: str = "") -> bool:
    return (
        f"{prefix}{MARKER}" in keys
        and f"{prefix}model.embed_tokens.weight" in keys
        and f"{prefix}model.layers.0.self_attn.k_proj.bias" not in keys
    )


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """transformers Qwen3Config values of the model stored under `prefix`."""
    vocab, hidden = shapes[f"{prefix}model.embed_tokens.weight"]
    head_dim = shapes[f"{prefix}{MARKER}"][0]
    q_width = shapes[f"{prefix}model.layers.0.self_attn.q_proj.weight"][0]
    kv_width = shapes[f"{prefix}model.layers.0.self_attn.k_proj.weight"][0]
    if q_width % head_dim or kv_width % head_dim:
        raise ValueError(
            f"Qwen3 text encoder widths {q_width}/{kv_width} do not split into {head_dim}-wide heads"
        )
    layers = 1 + max(
        int(k[len(prefix) :].split(".")[2]) for k in shapes if k.startswith(f"{prefix}model.layers.")
    )
    return {
        "vocab_size": vocab, "hidden_size": hidden, "head_dim": head_dim,
        "intermediate_size": shapes[f"{prefix}model.layers.0.mlp.gate_proj.weight"][0],
        "num_hidden_layers": layers, "num_attention_heads": q_width // head_dim,
        "num_key_value_heads": kv_width // head_dim, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "max_position_embeddings": 40960, "attention_bias": False, "tie_word_embeddings": False,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
    }  # fmt: skip


def empty_encoder(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import Qwen3Config, Qwen3Model

    with init_empty_weights():
        return Qwen3Model(Qwen3Config(**dict(config)))


def tokenize(tokenizer: Any, text: str) -> list[int]:
    # As for Qwen-Image: weights are off, but escaped brackets are unescaped.
    text = TEMPLATE.format(text).replace("\\)", ")").replace("\\(", "(")
    with _LOCK:
        return [int(t) for t in tokenizer(text)["input_ids"]]


def encode(encoder: Any, ids: list[int], layer_idx: int | None = None) -> torch.Tensor:
    """[1, tokens, hidden] float32 on the CPU: the output of layer `layer_idx` (counted from the
    end; None: Z-Image's -2), unnormalised, as ComfyUI's hidden-layer output; an index past the
    first layer (CLIPSetLastLayer beyond the depth) gives the last layer after the final norm."""
    if not ids:
        raise ValueError("a Z-Image prompt has no tokens")
    index = DEFAULT_LAYER if layer_idx is None else layer_idx
    layers = encoder.layers
    device = next(encoder.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    captured: list[torch.Tensor] = []
    hook = None
    if -len(layers) <= index < len(layers):
        layer = layers[index]
        hook = layer.register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
    try:
        with torch.no_grad():
            last = encoder(input_ids=input_ids, use_cache=False).last_hidden_state
    finally:
        if hook is not None:
            hook.remove()
    return (captured[0] if captured else last).float().to("cpu")
