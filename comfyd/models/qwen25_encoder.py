"""Qwen2.5-VL's language model as Qwen-Image's text encoder (CLIPLoader type "qwen_image"): build
it from a file's shapes, tokenize and encode as ComfyUI 0.3.64 does.

Files (qwen_2.5_vl_7b*.safetensors): transformers' Qwen2.5-VL names of the original release,
`model.embed_tokens`, `model.layers.N.{self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj,
input_layernorm, post_attention_layernorm}`, `model.norm`, plus `visual.*` (the vision tower, read
by nothing here yet) and `lm_head`; ComfyUI's `_fp8_scaled` files store fp8 weights with a
`scale_weight` per layer, dequantized on load (`apply_weight_scales`). The q/k/v projections carry biases (that is how the file is told
from a Llama). The text part is built as transformers' `Qwen2_5_VLTextModel`; its config comes
from the shapes. Head width: ComfyUI fixes the 7B's 128 (28 heads, 4 key/value heads); a file
whose widths are not multiples of 128 (comfyd's tiny test files) is taken to have 8-wide heads.

Tokenizer: Qwen2's byte-level BPE vocabulary, shipped compressed (configs/qwen25_tokenizer).

Prompt (ComfyUI's QwenImageTokenizer and QwenImageTEModel): the text is put into Qwen-Image's
chat template (a system message asking for a detailed description, then the prompt as the user
turn, then the assistant's opening) unless it already starts with `<|im_start|>`; weights are
not parsed (`(word:1.2)` stays text), only `\\(` / `\\)` become `(` / `)`. The whole string is
tokenized at once, no start, end or padding tokens. The encoder runs causally over all of it and
the last layer's output (after the final norm) is kept from the first token of the user turn on:
the tokens up to the second `<|im_start|>`, and that turn's `user` and newline tokens, are dropped;
the closing `<|im_end|>`, newline and assistant opening stay. No pooled output.
"""

from __future__ import annotations

import functools
import json
import lzma
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfyd.models.keymap import Source

TOKENIZER_DIR = Path(__file__).resolve().parent / "configs" / "qwen25_tokenizer"
TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, "
    "text, spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}"
    "<|im_end|>\n<|im_start|>assistant\n"
)
IM_START = 151644
USER = 872
NEWLINE = 198
PAD = 151643
FULL_HEAD_DIM = 128  # ComfyUI's Qwen25_7BVLI config
TINY_HEAD_DIM = 8
ROPE_THETA = 1_000_000.0
MARKER = "model.layers.0.self_attn.k_proj.bias"
_LOCK = threading.Lock()


def is_qwen25(keys: set[str], prefix: str = "") -> bool:
    return f"{prefix}{MARKER}" in keys and f"{prefix}model.embed_tokens.weight" in keys


def _head_dim(hidden: int, kv_width: int) -> int:
    if hidden % FULL_HEAD_DIM == 0 and kv_width % FULL_HEAD_DIM == 0:
        return FULL_HEAD_DIM
    return TINY_HEAD_DIM


def infer_config(shapes: Mapping[str, tuple[int, ...]], prefix: str = "") -> dict[str, Any]:
    """transformers Qwen2_5_VLTextConfig values of the language model stored under `prefix`."""
    vocab, hidden = shapes[f"{prefix}model.embed_tokens.weight"]
    kv_width = shapes[f"{prefix}model.layers.0.self_attn.k_proj.weight"][0]
    q_width = shapes[f"{prefix}model.layers.0.self_attn.q_proj.weight"][0]
    head_dim = _head_dim(hidden, kv_width)
    if q_width % head_dim or kv_width % head_dim:
        raise ValueError(
            f"Qwen2.5 text encoder widths {q_width}/{kv_width} do not split into {head_dim}-wide heads"
        )
    layers = 1 + max(
        int(k[len(prefix) :].split(".")[2]) for k in shapes if k.startswith(f"{prefix}model.layers.")
    )
    half = head_dim // 2  # the 7B's rotary sections (16, 24, 24) scaled to other head widths
    first = half // 4
    sections = [first, (half - first) // 2, half - first - (half - first) // 2]
    return {
        "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": shapes[f"{prefix}model.layers.0.mlp.gate_proj.weight"][0],
        "num_hidden_layers": layers, "num_attention_heads": q_width // head_dim,
        "num_key_value_heads": kv_width // head_dim, "rms_norm_eps": 1e-6, "hidden_act": "silu",
        "max_position_embeddings": 128000,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA, "mrope_section": sections},
    }  # fmt: skip


def empty_encoder(config: Mapping[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    with init_empty_weights():
        return Qwen2_5_VLTextModel(Qwen2_5_VLTextConfig(**dict(config)))


class Qwen25Translator:
    """Qwen2_5_VLTextModel parameter names -> the file's `model.*` keys under `prefix`."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix

    def source(self, name: str) -> Source | None:
        return Source(f"{self.prefix}model.{name}")


def original_name(name: str) -> str:
    return f"model.{name}"


def apply_weight_scales(module: nn.Module, tf: Any, prefix: str = "", stored: str = "model.") -> int:
    """Dequantize a "scaled fp8" file's weights (ComfyUI's `*_fp8_scaled` encoders: a `scaled_fp8`
    marker, fp8 weights and a `<layer>.scale_weight` per layer): weight * scale, in the loaded
    dtype. `stored`: where the module's layers sit under `prefix` ("model." for the language
    model, "visual." for Qwen2.5-VL's vision tower). Returns how many weights were scaled (0 for
    an ordinary file)."""
    keys = set(tf.keys())
    if f"{prefix}scaled_fp8" not in keys:
        return 0
    scaled = 0
    with torch.no_grad():
        for name, param in module.named_parameters():
            key = f"{prefix}{stored}{name.removesuffix('.weight')}.scale_weight"
            if name.endswith(".weight") and key in keys:
                param.mul_(tf.get(key).to(device=param.device, dtype=param.dtype))
                scaled += 1
    return scaled


@functools.lru_cache(maxsize=1)
def shipped_tokenizer() -> Any:
    """transformers' Qwen2Tokenizer over the shipped vocabulary (offline, special tokens at their ids)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = json.loads(lzma.decompress((TOKENIZER_DIR / "vocab.json.xz").read_bytes()))
    lines = lzma.decompress((TOKENIZER_DIR / "merges.txt.xz").read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # line 0: "#version"
    special = json.loads((TOKENIZER_DIR / "special_tokens.json").read_text())
    added = {int(i): AddedToken(text, special=True, normalized=False) for i, text in special.items()}
    return Qwen2Tokenizer(
        vocab=vocab, merges=merges, added_tokens_decoder=added, unk_token=None, bos_token=None,
        eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )  # fmt: skip


def templated(text: str) -> str:
    """The string ComfyUI tokenizes for a Qwen-Image prompt."""
    if text.startswith("<|im_start|>") or text.startswith("<|start_header_id|>"):
        return text
    return TEMPLATE.format(text)


def tokenize(tokenizer: Any, text: str) -> list[int]:
    # ComfyUI escapes \( \) before its (here disabled) weight parsing and unescapes them after.
    text = templated(text).replace("\\)", ")").replace("\\(", "(")
    with _LOCK:
        return [int(t) for t in tokenizer(text)["input_ids"]]


def template_end(ids: list[int]) -> int:
    """How many leading tokens ComfyUI drops: up to the second <|im_start|>, and its `user\\n`."""
    end = -1
    starts = 0
    for index, token in enumerate(ids):
        if token == IM_START and starts < 2:
            end = index
            starts += 1
    if len(ids) > end + 3 and ids[end + 1] == USER and ids[end + 2] == NEWLINE:
        end += 3
    return end


def encode(encoder: Any, ids: list[int]) -> torch.Tensor:
    """[1, tokens kept, hidden] float32 on the CPU (see the module docstring)."""
    if not ids:
        raise ValueError("a Qwen-Image prompt has no tokens")
    device = next(encoder.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    with torch.no_grad():
        hidden = encoder(input_ids=input_ids, use_cache=False).last_hidden_state
    # ComfyUI slices from -1 when the template was skipped and has no <|im_start|>: the last token.
    return hidden[:, template_end(ids) :].float().to("cpu")
