"""Flux.2's text conditioning: hidden states of three layers of a decoder LLM, side by side per token.

[dev] takes Mistral Small 3.x (`mistral3_encoder`): the prompt inside BFL's system-prompt template,
no padding (ComfyUI's Flux2 model later pads the context with zeros in front to 512 tokens,
`_flux2_transformer.pad_context`); hidden states 10, 20 and 30. [klein] takes Qwen3 4B or 8B
(`qwen3_encoder`'s model): the prompt inside Qwen3's chat template with the thinking block closed
(`enable_thinking=False`), padded after the text with <|endoftext|> up to 512 tokens, the padding
masked out of the attention; hidden states 9, 18 and 27. "Hidden state k" counts as transformers'
`output_hidden_states` does: 0 is the token embeddings, k the output of layer k-1, unnormalised
(a Mistral file exactly 30 layers deep gives its last layer raw, as ComfyUI's pruned one). The
output is [1, tokens, 3 * hidden], each token's three states concatenated in layer order, as
diffusers' Flux2Pipeline / Flux2KleinPipeline (`_get_*_prompt_embeds`) and ComfyUI compute it.
Weights in the prompt are not parsed (ComfyUI disables them for both); longer prompts are not cut.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from comfyd.models import mistral3_encoder

KLEIN_TEMPLATE = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
KLEIN_PAD = 151643  # <|endoftext|>
KLEIN_MIN_LENGTH = 512
_LOCK = threading.Lock()


def tokenize_klein(tokenizer: Any, text: str) -> tuple[list[int], int]:
    """(ids padded to 512, count of real tokens) of a Flux.2 [klein] prompt."""
    text = KLEIN_TEMPLATE.format(text.replace("\\)", ")").replace("\\(", "("))
    with _LOCK:
        ids = [int(t) for t in tokenizer(text)["input_ids"]]
    return ids + [KLEIN_PAD] * max(0, KLEIN_MIN_LENGTH - len(ids)), len(ids)


def tokenize_dev(tokenizer: Any, text: str) -> list[int]:
    with _LOCK:
        return mistral3_encoder.tokenize(tokenizer, text)


def tokens(kind: str, tokenizer: Any, text: str) -> list[int]:
    """The ids a Flux.2 text encoder of `kind` ("mistral3" | "qwen3_4b") reads for `text`."""
    if kind == "mistral3":
        return tokenize_dev(tokenizer, text)
    if kind == "qwen3_4b":
        return tokenize_klein(tokenizer, text)[0]
    raise ValueError(f"a {kind} text encoder has no place in a Flux.2 CLIP (Mistral Small 3.x or Qwen3)")


def encode_tokens(kind: str, encoder: Any, ids: list[int], layers: tuple[int, ...]) -> torch.Tensor:
    """Flux.2's conditioning from `tokens`' ids and the family's `layers`: [dev]'s unpadded,
    [klein]'s padding masked."""
    if kind == "mistral3":
        return encode(encoder, ids, len(ids), layers)
    real = len(ids)
    while real > 0 and ids[real - 1] == KLEIN_PAD:
        real -= 1
    return encode(encoder, ids, max(real, 1), layers)


def encode(encoder: Any, ids: list[int], real: int, layers: tuple[int, ...]) -> torch.Tensor:
    """[1, len(ids), len(layers) * hidden] float32 on the CPU; tokens past `real` are masked."""
    if not ids:
        raise ValueError("a Flux.2 prompt has no tokens")
    depth = len(encoder.layers)
    if max(layers) > depth:
        raise ValueError(
            f"a Flux.2 text encoder needs hidden state {max(layers)}, but this one has {depth} layers"
        )
    device = next(encoder.parameters()).device
    input_ids = torch.tensor([ids], dtype=torch.long, device=device)
    mask = torch.zeros_like(input_ids)
    mask[:, :real] = 1
    with torch.no_grad():
        hidden = encoder(
            input_ids=input_ids, attention_mask=mask, output_hidden_states=True, use_cache=False
        ).hidden_states
    stacked = torch.stack([hidden[k] for k in layers], dim=2)  # [1, tokens, layers, hidden]
    return stacked.reshape(1, len(ids), -1).float().to("cpu")
