"""HiDream's Llama-3.1-8B text path: every layer's hidden state, as ComfyUI 0.3.64 drives it
(comfy/text_encoders/hidream.py with hunyuan_video's LLAMA3Tokenizer and LLAMAModel, layer "all").

The encoder file and its tokenizer are HunyuanVideo's rule (`llama_encoder`: transformers names
under `model.`, Llama 3's tokenizer.json in `llama_tokenizer/` beside the file, never shipped).

Tokenization: no template. The weight syntax is parsed over the prompt, each segment tokenized
without its begin token, the sequence starts with the begin token (128000), has no end token and
is padded with <|eot_id|> (128009) to at least 128 tokens; longer prompts are not cut.
Encoding: the padding (from the first <|eot_id|> on) is masked out of attention and kept in the
output. The output is every decoder layer's hidden state, the last one after the final norm
(transformers' hidden_states[1:]): [1, layers, tokens, hidden].

Weights: ComfyUI's token-weight loop indexes the first axis of this 4-D output, which here is
the layer axis, so the weight of token j re-weights layer j's whole output against the empty
prompt ([begin, pad, ...]) before the embedding layer is dropped; reproduced as such.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from comfyd.models import llama_encoder
from comfyd.models.prompt_weights import parse_prompt_weights

MIN_LENGTH = 128
PAD_TEXT = "<|eot_id|>"  # id 128009 in Llama 3's vocabulary
LAYERS = 32  # Llama-3.1-8B's decoder layers: what ComfyUI's zero fallback holds
_LOCK = threading.Lock()
Tokens = list[tuple[int, float]]


def _id(tokenizer: Any, text: str) -> int:
    found = tokenizer.token_to_id(text)
    if found is None:
        raise ValueError(f"the Llama tokenizer has no token {text!r}")
    return int(found)


def tokenize(tokenizer: Any, text: str, min_length: int = MIN_LENGTH) -> Tokens:
    """(id, weight) pairs: begin token, the prompt's segments, <|eot_id|> padding to `min_length`."""
    tokens: Tokens = [(_id(tokenizer, llama_encoder.BEGIN), 1.0)]
    for segment in parse_prompt_weights(text):
        if segment.text == "":
            continue
        with _LOCK:
            ids = tokenizer.encode(segment.text, add_special_tokens=False).ids
        tokens.extend((int(t), float(segment.weight)) for t in ids)
    pad = _id(tokenizer, PAD_TEXT)
    if len(tokens) < min_length:
        tokens.extend([(pad, 1.0)] * (min_length - len(tokens)))
    return tokens


def attention_mask(ids: list[int], pad: int) -> list[int]:
    """1 before the first pad token, 0 from it on (ComfyUI masks the first pad too: no end token)."""
    mask, ended = [], False
    for token in ids:
        ended = ended or token == pad
        mask.append(0 if ended else 1)
    return mask


def encode(encoder: Any, tokens: Tokens) -> torch.Tensor:
    """[1, layers, tokens, hidden] float32 on the CPU (see the module docstring)."""
    tokenizer = llama_encoder.require_tokenizer(encoder)
    pad = _id(tokenizer, PAD_TEXT)
    device = next(encoder.parameters()).device
    ids = [t for t, _ in tokens]
    weights = [w for _, w in tokens]
    weighted = any(w != 1.0 for w in weights)
    batch = [ids]
    if weighted:
        batch.append([ids[0]] + [pad] * (len(ids) - 1))
    masks = [attention_mask(row, pad) for row in batch]
    with torch.no_grad():
        out = encoder(
            input_ids=torch.tensor(batch, dtype=torch.long, device=device),
            attention_mask=torch.tensor(masks, dtype=torch.long, device=device),
            output_hidden_states=True,
        )
    # [B, embeddings + layers, tokens, hidden]
    stacked = torch.stack([h.float() for h in out.hidden_states], dim=1)
    z = stacked[0]
    if weighted:
        empty = stacked[1]
        z = z.clone()
        for j in range(min(len(weights), z.shape[0])):
            if weights[j] != 1.0:
                z[j] = (z[j] - empty[j]) * weights[j] + empty[j]
    return z[1:].unsqueeze(0).cpu()
