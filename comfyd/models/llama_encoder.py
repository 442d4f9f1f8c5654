"""The LLaVA-Llama-3 text encoder of HunyuanVideo (llava_llama3_fp16 / llava_llama3_fp8_scaled in
`text_encoders/`), driven as ComfyUI drives it (comfy/text_encoders/hunyuan_video.py).

Files: a Llama decoder in transformers' names under `model.` (`model.embed_tokens.weight`,
`model.layers.N.self_attn.q_proj.weight`, `model.norm.weight`); fp8 "scaled" files carry a
`scale_weight` per linear weight (the stored weight times it is the real one), dequantized here.
Config from the shapes, as ComfyUI's Llama-3-8B config: 128-wide heads, RMSNorm eps 1e-5, rope
theta 500000, no rope scaling.

Tokenizer: Llama 3's byte-level BPE (`tokenizer.json`). ComfyUI's encoder files do not carry it and
comfyd does not ship it (its licence is Meta's); it is read from a `llama_tokenizer/` folder beside
the text-encoder file (`models/text_encoders/llama_tokenizer/tokenizer.json`, the file ComfyUI
keeps in comfy/text_encoders/llama_tokenizer/).

Tokenization: the prompt goes into ComfyUI's HunyuanVideo template, the weight syntax is parsed
over the whole text, each segment is tokenized without its begin token, and one sequence starts
with the begin token; no end token, no padding. Encoding: the hidden state after the third-last
layer (ComfyUI's layer_idx -3, no final norm); weighted tokens become (z - z_empty) * w + z_empty
against [begin, pad, pad, ...] with the padding masked. The output keeps the user part of the
template only: from after `<|start_header_id|>user<|end_header_id|>\\n\\n` up to and including the
closing `<|eot_id|>`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from comfyd.models.prompt_weights import parse_prompt_weights

logger = logging.getLogger(__name__)

HEAD_DIM = 128
HIDDEN_LAYER = -3
TEMPLATE = (
    "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
    "1. The main content and theme of the video.2. The color, shape, size, texture, quantity, text, and "
    "spatial relationships of the objects.3. Actions, events, behaviors temporal relationships, physical "
    "movement changes of the objects.4. background environment, light, style and atmosphere.5. camera "
    "angles, movements, and transitions used in the video:<|eot_id|><|start_header_id|>user<|end_header_id|>"
    "\n\n{}<|eot_id|>"
)
TOKENIZER_FOLDER = "llama_tokenizer"
SCALE_SUFFIX = ".scale_weight"
# Tokens the crop looks for, by their text (Llama 3's ids: 128000, 128006, 882, 128007, 271, 128009).
BEGIN, START_HEADER, USER, END_HEADER, BLANK_LINE, EOT = (
    "<|begin_of_text|>", "<|start_header_id|>", "user", "<|end_header_id|>", "\u010a\u010a", "<|eot_id|>",
)  # fmt: skip
PAD_TOKEN_ID = 128258  # ComfyUI's pad id for the empty prompt of a weighted one
PAD_TOKEN = "<|finetune_right_pad_id|>"
_LOCK = threading.Lock()
Tokens = list[tuple[int, float]]


def find_prefix(keys: set[str], base: str = "") -> str | None:
    """Where the `model.` names of a Llama decoder start in a file, or None."""
    for prefix in (f"{base}model.", f"{base}transformer.model."):
        if f"{prefix}layers.0.self_attn.q_proj.weight" in keys and f"{prefix}embed_tokens.weight" in keys:
            return prefix
    return None


def infer_config(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    vocab, hidden = shapes[f"{prefix}embed_tokens.weight"]
    layers = {int(k[len(prefix) + 7 :].split(".", 1)[0]) for k in shapes if k.startswith(f"{prefix}layers.")}
    if hidden % HEAD_DIM:
        raise ValueError(f"a Llama text encoder {hidden} wide cannot have {HEAD_DIM}-wide heads")
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": shapes[f"{prefix}layers.0.mlp.gate_proj.weight"][0],
        "num_hidden_layers": max(layers) + 1,
        "num_attention_heads": hidden // HEAD_DIM,
        "num_key_value_heads": shapes[f"{prefix}layers.0.self_attn.k_proj.weight"][0] // HEAD_DIM,
        "head_dim": HEAD_DIM,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "hidden_act": "silu",
    }


def empty_encoder(config: dict[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import LlamaConfig, LlamaModel

    llama_config = LlamaConfig(**config)
    llama_config._attn_implementation = "sdpa"
    with init_empty_weights():
        return LlamaModel(llama_config)


def load(tf: Any, prefix: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """A LlamaModel from `tf`'s tensors under `prefix` (fp8 "scaled" weights dequantized)."""
    from comfyd.models.detect import UnknownCheckpointLayout

    keys = set(tf.keys())
    module = empty_encoder(infer_config(tf.shapes(), prefix))
    state: dict[str, torch.Tensor] = {}
    for name, ref in module.state_dict(keep_vars=True).items():
        key = prefix + name
        if key not in keys:
            if name.endswith("inv_freq"):
                continue
            raise UnknownCheckpointLayout(f"Llama text encoder in {tf.path.name}: {key} is missing")
        tensor = tf.get(key)
        scale_key = key.removesuffix(".weight") + SCALE_SUFFIX
        if scale_key in keys:
            tensor = tensor.float() * tf.get(scale_key).float()
        if tuple(tensor.shape) != tuple(ref.shape):
            raise UnknownCheckpointLayout(
                f"Llama text encoder in {tf.path.name}: {key} has shape {tuple(tensor.shape)}, "
                f"the model expects {tuple(ref.shape)}"
            )
        state[name] = tensor.to(device=device, dtype=dtype if ref.is_floating_point() else ref.dtype)
    module.load_state_dict(state, strict=False, assign=True)
    module.to(device)  # the rotary frequencies are built, not stored
    module.comfyd_llama_tokenizer = tokenizer_beside(Path(tf.path))
    return module.requires_grad_(False).eval()


def tokenizer_beside(path: Path) -> Any | None:
    """The Llama tokenizer in `llama_tokenizer/` next to the encoder file (None: not there)."""
    folder = path.parent / TOKENIZER_FOLDER
    if not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(folder / "tokenizer.json"))


def require_tokenizer(encoder: Any) -> Any:
    tokenizer = getattr(encoder, "comfyd_llama_tokenizer", None)
    if tokenizer is None:
        raise ValueError(
            "no Llama tokenizer for this text encoder: put Llama 3's tokenizer.json (ComfyUI keeps it "
            f"in comfy/text_encoders/{TOKENIZER_FOLDER}/) into a {TOKENIZER_FOLDER}/ folder beside the "
            "text-encoder file (models/text_encoders/llama_tokenizer/tokenizer.json)"
        )
    return tokenizer


def _id(tokenizer: Any, text: str) -> int:
    found = tokenizer.token_to_id(text)
    if found is None:
        raise ValueError(f"the Llama tokenizer has no token {text!r}")
    return int(found)


def tokenize(tokenizer: Any, text: str) -> Tokens:
    """The template with `text` in it as (id, weight) pairs (see the module docstring)."""
    tokens: Tokens = [(_id(tokenizer, BEGIN), 1.0)]
    for segment in parse_prompt_weights(TEMPLATE.format(text)):
        if segment.text == "":
            continue
        with _LOCK:
            ids = tokenizer.encode(segment.text, add_special_tokens=False).ids
        tokens.extend((int(t), float(segment.weight)) for t in ids)
    return tokens


def user_span(tokenizer: Any, ids: list[int]) -> tuple[int, int]:
    """[start, end) of the user's part of the template (ComfyUI's crop)."""
    start_header, user, end_header = _id(tokenizer, START_HEADER), _id(tokenizer, USER), _id(tokenizer, END_HEADER)
    eot, blank = _id(tokenizer, EOT), tokenizer.token_to_id(BLANK_LINE)
    start, end, in_user = 0, len(ids), False
    for i, token in enumerate(ids):
        if token == start_header and ids[i + 1 : i + 3] == [user, end_header]:
            start, in_user = i + 2, True
        elif token == eot and in_user:
            end, in_user = i + 1, False
    if len(ids) > start + 2 and ids[start + 1] == blank:
        start += 2
    return start, end


def pad_id(tokenizer: Any, vocab_size: int) -> int:
    """ComfyUI's pad id (128258) where the vocabulary has it, else the tokenizer's pad token
    (small test vocabularies)."""
    if PAD_TOKEN_ID < vocab_size:
        return PAD_TOKEN_ID
    return _id(tokenizer, PAD_TOKEN)


def encode(encoder: Any, tokens: Tokens) -> torch.Tensor:
    """[1, user tokens, hidden] float32 on the CPU: the hidden state after the third-last layer."""
    tokenizer = require_tokenizer(encoder)
    device = next(encoder.parameters()).device
    ids = [t for t, _ in tokens]
    weights = [w for _, w in tokens]
    weighted = any(w != 1.0 for w in weights)
    batch, masks = [ids], [[1] * len(ids)]
    if weighted:
        pad = pad_id(tokenizer, encoder.config.vocab_size)
        batch.append([ids[0]] + [pad] * (len(ids) - 1))
        masks.append([1] + [0] * (len(ids) - 1))
    with torch.no_grad():
        out = encoder(
            input_ids=torch.tensor(batch, dtype=torch.long, device=device),
            attention_mask=torch.tensor(masks, dtype=torch.long, device=device),
            output_hidden_states=True,
        )
    hidden = out.hidden_states[HIDDEN_LAYER].float()
    z = hidden[0]
    if weighted:
        empty = hidden[1]
        w = torch.tensor(weights, dtype=z.dtype, device=z.device).unsqueeze(-1)
        changed = torch.tensor([x != 1.0 for x in weights], device=z.device).unsqueeze(-1)
        z = torch.where(changed, (z - empty) * w + empty, z)
    start, end = user_span(tokenizer, ids)
    return z[start:end].unsqueeze(0).cpu()
