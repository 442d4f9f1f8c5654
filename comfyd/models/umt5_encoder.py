"""UMT5 text encoders (Wan's umt5-xxl): build from a file's shapes, tokenize and encode as ComfyUI
does for CLIPLoader type "wan".

Files: the transformers `UMT5EncoderModel` layout, the same names as T5's (`shared.weight`,
`encoder.block.N.layer.0.SelfAttention.q.weight`, ...) except that every block carries its own
`relative_attention_bias` (T5 has one in block 0 only): that is how a UMT5 file is told apart.
The SentencePiece model travels inside the file as a uint8 tensor `spiece_model`, which is where
ComfyUI reads Wan's tokenizer from; comfyd reads it from there too (a file without one is refused).

Tokenization (ComfyUI's UMT5XXlTokenizer): weight syntax parsed, each segment tokenized without
its end token, one sequence closed by the end token 1 and padded with 0 to at least 512 tokens.
Encoding: the attention mask is 1 up to and including the end token and 0 after it; the encoder
attends only to unmasked tokens and the masked positions of the output are zeroed. Weighted tokens
w != 1 become (z - z_empty) * w + z_empty against the empty prompt of the same length.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from torch import nn

from comfyd.models import t5_encoder
from comfyd.models.prompt_weights import parse_prompt_weights
from comfyd.models.tokenizer_options import Padding, pad

END_TOKEN = t5_encoder.END_TOKEN
PAD_TOKEN = t5_encoder.PAD_TOKEN
MIN_LENGTH = 512
SPIECE_KEY = "spiece_model"
SPIECE_SUFFIX = ".spiece.model"  # a SentencePiece model beside a file that carries none
_LOCK = threading.Lock()
Tokens = list[tuple[int, float]]


def is_umt5(keys: set[str], prefix: str) -> bool:
    return f"{prefix}encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight" in keys


def infer_config(shapes: dict[str, tuple[int, ...]], prefix: str) -> dict[str, Any]:
    """transformers UMT5Config values (T5's reading of the shapes; UMT5 has no tied embedding)."""
    config = t5_encoder.infer_config(shapes, prefix)
    config.pop("is_gated_act", None)
    config["is_encoder_decoder"] = False
    config["scalable_attention"] = False
    return config


def empty_encoder(config: dict[str, Any]) -> nn.Module:
    from accelerate import init_empty_weights
    from transformers import UMT5Config, UMT5EncoderModel

    with init_empty_weights():
        return UMT5EncoderModel(UMT5Config(**config))


def tokenizer_from_bytes(model_proto: bytes) -> Any:
    """A SentencePiece processor (no BOS; the end token is added per segment and dropped)."""
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_proto=model_proto, add_bos=False, add_eos=True)


def spiece_bytes(tensor: torch.Tensor) -> bytes:
    return tensor.to(torch.uint8).numpy().tobytes()


def tokenize(
    tokenizer: Any, text: str, min_length: int = MIN_LENGTH, end_token: int = END_TOKEN, pad_token: int = PAD_TOKEN,
    min_padding: int = 0,
) -> Tokens:
    tokens: Tokens = []
    for segment in parse_prompt_weights(text):
        if segment.text == "":
            continue
        with _LOCK:
            ids = tokenizer.encode(segment.text)
        tokens.extend((int(t), float(segment.weight)) for t in ids[:-1])
    tokens.append((end_token, 1.0))
    return pad(tokens, pad_token, Padding(min_padding, min_length))


def encode(encoder: Any, tokens: Tokens, end_token: int = END_TOKEN, pad_token: int = PAD_TOKEN) -> torch.Tensor:
    """[1, len(tokens), d_model] float32 on the CPU (see the module docstring): T5's encoding with
    the padding masked out and zeroed."""
    return t5_encoder.encode(encoder, tokens, masked=True, end_token=end_token, pad_token=pad_token)
