"""fp32 forward pass of a transformers CLIP text model, the way ComfyUI computes it.

ComfyUI keeps CLIP weights in fp16 on CPU but does the math in fp32 (comfy.ops.manual_cast: each
op casts its weight to the input's dtype). This module does the same over the parameters of a
transformers CLIPTextModel / CLIPTextModelWithProjection, used only as a weight container, so that:
- the input is a batch of token *embeddings* (textual-inversion vectors can sit in token slots);
- the hidden state after any layer can be taken (CLIPSetLastLayer, SD2/SDXL's penultimate layer);
- attention has the causal mask only (no padding mask), as ComfyUI's SD1/SD2/SDXL encoders;
- nothing is copied or converted in place: weights are cast per op, LoRA-patched weights are used
  as they stand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from comfyd.models.interrupts import check_interrupt

COMPUTE_DTYPE = torch.float32


@dataclass
class ClipTextOutput:
    final: torch.Tensor  # [B, T, D] output of the last layer after final_layer_norm
    captured: torch.Tensor | None  # [B, T, D] raw output of the requested layer (no norm)


def text_transformer(encoder: Any) -> Any:
    """The module holding embeddings/encoder/final_layer_norm (transformers nests it in `text_model`)."""
    return getattr(encoder, "text_model", encoder)


def num_layers(encoder: Any) -> int:
    return len(text_transformer(encoder).encoder.layers)


def hidden_size(encoder: Any) -> int:
    return int(text_transformer(encoder).embeddings.token_embedding.weight.shape[-1])


def encoder_device(encoder: Any) -> torch.device:
    return text_transformer(encoder).embeddings.token_embedding.weight.device


def token_embeddings(encoder: Any, token_ids: torch.Tensor) -> torch.Tensor:
    """Vocabulary embeddings of `token_ids` ([..., T] long) in fp32."""
    weight = text_transformer(encoder).embeddings.token_embedding.weight
    return F.embedding(token_ids.to(weight.device), weight).to(COMPUTE_DTYPE)


def run_text_encoder(encoder: Any, input_embeds: torch.Tensor, capture_layer: int | None) -> ClipTextOutput:
    """Run all layers on `input_embeds` ([B, T, D] token embeddings, no positions yet).

    `capture_layer` is a 0-based layer index whose raw output is returned as well (None: none).
    """
    model = text_transformer(encoder)
    x = input_embeds.to(COMPUTE_DTYPE)
    tokens = x.shape[1]
    positions = model.embeddings.position_embedding.weight[:tokens]
    x = x + positions.to(device=x.device, dtype=COMPUTE_DTYPE)
    # ComfyUI's causal mask: the most negative finite float above the diagonal.
    causal_mask = torch.full(
        (tokens, tokens), -torch.finfo(COMPUTE_DTYPE).max, dtype=COMPUTE_DTYPE, device=x.device
    )
    causal_mask = causal_mask.triu(1)
    captured = None
    for index, layer in enumerate(model.encoder.layers):
        check_interrupt()  # a prompt of hundreds of chunks takes seconds per layer
        x = _encoder_layer(layer, x, causal_mask)
        if index == capture_layer:
            captured = x
    return ClipTextOutput(final=final_layer_norm(encoder, x), captured=captured)


def final_layer_norm(encoder: Any, hidden: torch.Tensor) -> torch.Tensor:
    return _layer_norm(text_transformer(encoder).final_layer_norm, hidden)


def project_pooled(encoder: Any, pooled: torch.Tensor) -> torch.Tensor | None:
    """`text_projection(pooled)` for encoders that have one (CLIPTextModelWithProjection), else None."""
    projection = getattr(encoder, "text_projection", None)
    if projection is None:
        return None
    return _linear(projection, pooled)


def _encoder_layer(layer: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = x + _self_attention(layer.self_attn, _layer_norm(layer.layer_norm1, x), mask)
    mlp = layer.mlp
    hidden = mlp.activation_fn(_linear(mlp.fc1, _layer_norm(layer.layer_norm2, x)))
    return x + _linear(mlp.fc2, hidden)


def _self_attention(attn: Any, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    batch, tokens, width = x.shape
    heads = int(attn.num_heads)
    head_dim = width // heads

    def split_heads(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, tokens, heads, head_dim).transpose(1, 2)

    q = split_heads(_linear(attn.q_proj, x))
    k = split_heads(_linear(attn.k_proj, x))
    v = split_heads(_linear(attn.v_proj, x))
    scores = torch.matmul(q, k.transpose(-1, -2)) * (head_dim**-0.5) + mask
    out = torch.matmul(scores.softmax(dim=-1), v)
    out = out.transpose(1, 2).reshape(batch, tokens, width)
    return _linear(attn.out_proj, out)


def _linear(module: Any, x: torch.Tensor) -> torch.Tensor:
    bias = module.bias.to(device=x.device, dtype=x.dtype) if module.bias is not None else None
    return F.linear(x, module.weight.to(device=x.device, dtype=x.dtype), bias)


def _layer_norm(module: Any, x: torch.Tensor) -> torch.Tensor:
    weight = module.weight.to(device=x.device, dtype=x.dtype) if module.weight is not None else None
    bias = module.bias.to(device=x.device, dtype=x.dtype) if module.bias is not None else None
    return F.layer_norm(x, module.normalized_shape, weight, bias, module.eps)
