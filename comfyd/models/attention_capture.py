"""Self-attention guidance, the model half: record the negative prompt's self-attention
probabilities in the UNet's middle block (its first transformer's attn1), as ComfyUI's SAG node
does by replacing that attention.

While installed, the layer's diffusers attention processor is swapped for one that, whenever the
batch holds the negative prompt, computes attention explicitly (scores, softmax, weighted sum),
stores the negative chunk's probabilities in the shared `AttentionRecord`, and returns the same
output; other batches go through the original processor. Removing the hook puts the original
processor back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from comfyd.sampling.self_attention_guidance import AttentionRecord


class _RecordingProcessor:
    def __init__(self, original: Any, record: AttentionRecord) -> None:
        self.original = original
        self.record = record

    def __call__(
        self,
        attn: Any,
        hidden_states: Tensor,
        encoder_hidden_states: Tensor | None = None,
        attention_mask: Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Tensor:
        chunk = self.record.negative_chunk()
        plain = encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3
        if chunk is None or not plain or attn.norm_cross is not None or attn.group_norm is not None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs)
        residual = hidden_states
        batch = hidden_states.shape[0]
        heads = attn.heads
        q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        dim_head = q.shape[-1] // heads

        def split(t: Tensor) -> Tensor:
            return t.reshape(batch, -1, heads, dim_head).permute(0, 2, 1, 3).reshape(batch * heads, -1, dim_head)

        q, k, v = split(q), split(k), split(v)
        sim = torch.einsum("b i d, b j d -> b i j", q, k) * dim_head**-0.5
        sim = sim.softmax(dim=-1)
        out = torch.einsum("b i j, b j d -> b i d", sim.to(v.dtype), v)
        out = out.reshape(batch, heads, -1, dim_head).permute(0, 2, 1, 3).reshape(batch, -1, heads * dim_head)
        index, chunks = chunk
        per_chunk = heads * (batch // chunks)
        self.record.store(sim[per_chunk * index : per_chunk * (index + 1)])
        out = attn.to_out[1](attn.to_out[0](out))
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class _ProcessorRestore:
    def __init__(self, attention: nn.Module, original: Any) -> None:
        self.attention = attention
        self.original = original

    def remove(self) -> None:
        self.attention.processor = self.original


def middle_self_attention(unet: nn.Module) -> nn.Module:
    """The first self-attention of the UNet's middle block (ComfyUI's ("middle", 0, 0))."""
    attentions = getattr(getattr(unet, "mid_block", None), "attentions", None)
    if not attentions:
        raise ValueError("self-attention guidance needs a UNet with attention in its middle block")
    return attentions[0].transformer_blocks[0].attn1


@dataclass(frozen=True, eq=False)
class SelfAttentionCapture:
    """The UnetHook that records into `record` while installed."""

    record: AttentionRecord

    def install(self, unet: nn.Module) -> list[Any]:
        attention = middle_self_attention(unet)
        original = attention.processor
        # Assigned directly: set_processor would also drop the module's cached processor state.
        attention.processor = _RecordingProcessor(original, self.record)
        return [_ProcessorRestore(attention, original)]
